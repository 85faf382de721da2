"""sft: sequence-level KD (Kim & Rush, 2016): next-token cross-entropy on the
teacher's generated text. Black-box: needs only the teacher's outputs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from kdbench.distill.losses import causal_lm_ce
from kdbench.distill.trainer import StepContext


class SFTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


def sft_step(ctx: StepContext, batch):
    """Cross-entropy on the response tokens. batch: input_ids/attention_mask/loss_mask [B,T]."""
    logits = ctx.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return causal_lm_ce(logits, batch["input_ids"], batch["loss_mask"]), {}
