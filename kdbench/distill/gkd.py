"""gkd: generalised knowledge distillation (Agarwal et al., 2024), on-policy.

With probability lambda a batch's responses are replaced by the student's own
samples for the same prompts, and the student is pulled towards the teacher's
token distributions on them with any divergence of losses.py (default the
generalised JSD with beta = 0.5); otherwise the batch's teacher text is used.
Needs the teacher model in memory (its logits on new text).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from kdbench.distill.divergence import DivergenceConfig, divergence_loss
from kdbench.distill.fused import output_of
from kdbench.distill.onpolicy import student_batch
from kdbench.training import StepContext


class GKDConfig(DivergenceConfig):
    """Defaults from the GKD paper's main setting: lambda = 0.5, JSD(beta = 0.5), sampling at tau = 1."""

    lmbda: float = Field(0.5, ge=0, le=1)  # fraction of on-policy (student-generated) batches
    divergence: Literal["fkl", "rkl", "jsd", "tvd", "skl", "srkl"] = "jsd"
    max_new_tokens: int = Field(48, ge=1)
    sample_temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)


def gkd_step(ctx: StepContext, batch):
    hp: GKDConfig = ctx.hp
    on_policy = bool(torch.rand((), generator=ctx.generator) < hp.lmbda)
    if on_policy:
        batch = student_batch(ctx, batch, hp.max_new_tokens, hp.sample_temperature, hp.top_p)
    student, _ = output_of(ctx.student, batch["input_ids"], batch["attention_mask"], fused=ctx.fused)
    loss, logs = divergence_loss(hp.divergence, ctx, batch, student)
    logs["on_policy"] = float(on_policy)
    return loss, logs
