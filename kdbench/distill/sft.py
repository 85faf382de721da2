"""sft: sequence-level KD (Kim & Rush, 2016): next-token cross-entropy on the
teacher's generated text. Black-box: needs only the teacher's outputs. Fused by
default: the cross-entropy is computed from the final hidden states chunk by
chunk (kdbench.distill.fused), never holding [B,T,V] logits."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from kdbench.distill.fused import cross_entropy_of, output_of
from kdbench.training import StepContext


class SFTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


def sft_step(ctx: StepContext, batch):
    """Cross-entropy on the response tokens. batch: input_ids/attention_mask/loss_mask [B,T]."""
    student, _ = output_of(ctx.student, batch["input_ids"], batch["attention_mask"], fused=ctx.fused)
    return cross_entropy_of(student, batch["input_ids"], batch["loss_mask"]), {}
