"""hidden: feature distillation on hidden states beside a logit loss.

Student layers are mapped uniformly onto teacher layers (student layer i of L_s
to teacher layer round(i * L_t / L_s)); a learned linear projection per mapped
layer lifts student states to the teacher's width, and MSE or 1 - cosine
similarity between them is averaged over response tokens (as in TinyBERT-style
feature KD; the projections are trained with the student and discarded after).
The logit term is any divergence of losses.py (default forward KL).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdbench.distill.divergence import DivergenceConfig, divergence_loss
from kdbench.distill.trainer import StepContext


class HiddenConfig(DivergenceConfig):
    feature_loss: Literal["mse", "cosine"] = "mse"
    feature_weight: float = Field(1.0, ge=0)
    logit_divergence: Literal["fkl", "rkl", "jsd", "tvd", "skl", "srkl"] = "fkl"
    logit_weight: float = Field(1.0, ge=0)


def layer_map(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs over hidden_states indices 1..L (0 is the embeddings)."""
    return [(i, max(1, round(i * n_teacher / n_student))) for i in range(1, n_student + 1)]


def make_projections(student, teacher, hp: HiddenConfig) -> dict:
    hs, ht = student.config.hidden_size, teacher.config.hidden_size
    pairs = layer_map(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    return {"projections": torch.nn.ModuleList(torch.nn.Linear(hs, ht) for _ in pairs)}


def feature_loss(s_states, t_states, mask: torch.Tensor, projections, kind: str) -> torch.Tensor:
    """Mean over mapped layers of the per-token feature loss on masked positions.

    s_states/t_states: tuples of [B,T,H] (hidden_states incl. embeddings); mask [B,T] bool.
    """
    pairs = layer_map(len(s_states) - 1, len(t_states) - 1)
    total = 0.0
    for proj, (i, j) in zip(projections, pairs, strict=True):
        s = proj(s_states[i][mask].float())
        t = t_states[j][mask].float()
        total = total + (F.mse_loss(s, t) if kind == "mse" else (1 - F.cosine_similarity(s, t, dim=-1)).mean())
    return total / len(pairs)


def hidden_step(ctx: StepContext, batch):
    hp: HiddenConfig = ctx.hp
    out = ctx.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      output_hidden_states=True)
    with torch.no_grad():
        t_out = ctx.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            output_hidden_states=True)
    mask = batch["loss_mask"]
    feat = feature_loss(out.hidden_states, t_out.hidden_states, mask, ctx.extra["projections"], hp.feature_loss)
    batch = {**batch, "_teacher_logits": t_out.logits}
    logit, logs = divergence_loss(hp.logit_divergence, ctx, batch, out.logits)
    logs["feature"] = float(feat.detach())
    return hp.feature_weight * feat + hp.logit_weight * logit, logs
