"""hidden: feature distillation on hidden states beside a logit loss.

Student layers are mapped uniformly onto teacher layers (student layer i of L_s
to teacher layer floor(i * L_t / L_s + 1/2), at least 1); a learned linear projection per mapped
layer lifts student states to the teacher's width, and MSE or 1 - cosine
similarity between them is averaged over response tokens (as in TinyBERT-style
feature KD; the projections are trained with the student and discarded after).
The logit term is any divergence of losses.py (default forward KL).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdbench.distill.divergence import DivergenceConfig, divergence_loss
from kdbench.distill.fused import Head, output_of
from kdbench.models.loading import MODEL_LOCK
from kdbench.training import StepContext


class HiddenConfig(DivergenceConfig):
    feature_loss: Literal["mse", "cosine"] = "mse"
    feature_weight: float = Field(1.0, ge=0)
    logit_divergence: Literal["fkl", "rkl", "jsd", "tvd", "skl", "srkl"] = "fkl"
    logit_weight: float = Field(1.0, ge=0)


def layer_map(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs over hidden_states indices 1..L (0 is the embeddings);
    halves round up, so the last student layer meets the last teacher layer."""
    return [(i, max(1, math.floor(i * n_teacher / n_student + 0.5))) for i in range(1, n_student + 1)]


class Projections(torch.nn.Module):
    """One linear map per mapped student layer, student width -> teacher width.

    A module with a forward (not a bare list), so accelerate can prepare it beside
    the student and its gradients synchronise across processes.
    """

    def __init__(self, n_layers: int, student_width: int, teacher_width: int):
        super().__init__()
        with MODEL_LOCK:  # torch's init functions must not be transformers' no-ops of another thread's load
            self.maps = torch.nn.ModuleList(torch.nn.Linear(student_width, teacher_width) for _ in range(n_layers))

    def forward(self, states: list[torch.Tensor]) -> list[torch.Tensor]:
        """states: one [N,H_s] per mapped layer -> one [N,H_t] each."""
        return [m(x) for m, x in zip(self.maps, states, strict=True)]


def make_projections(student, teacher, hp: HiddenConfig) -> dict:
    pairs = layer_map(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    return {"projections": Projections(len(pairs), student.config.hidden_size, teacher.config.hidden_size)}


def feature_loss(s_states, t_states, mask: torch.Tensor, projections, kind: str) -> torch.Tensor:
    """Mean over mapped layers of the per-token feature loss on masked positions.

    s_states/t_states: tuples of [B,T,H] (hidden_states incl. embeddings); mask [B,T] bool;
    projections: a Projections module (or its accelerate wrapper).
    """
    pairs = layer_map(len(s_states) - 1, len(t_states) - 1)
    projected = projections([s_states[i][mask].float() for i, _ in pairs])
    total = torch.zeros((), device=mask.device)
    for s, (_, j) in zip(projected, pairs, strict=True):
        t = t_states[j][mask].float()
        total = total + (F.mse_loss(s, t) if kind == "mse" else (1 - F.cosine_similarity(s, t, dim=-1)).mean())
    return total / len(pairs)


def hidden_step(ctx: StepContext, batch):
    hp: HiddenConfig = ctx.hp
    ids, attn = batch["input_ids"], batch["attention_mask"]
    student, out = output_of(ctx.student, ids, attn, fused=ctx.fused, hidden_states=True)
    assert ctx.teacher is not None, "hidden needs the teacher model (teacher_model=True in the registry)"
    with torch.no_grad():
        teacher, t_out = output_of(ctx.teacher, ids, attn, fused=isinstance(student, Head), hidden_states=True)
    mask = batch["loss_mask"]
    feat = feature_loss(out.hidden_states, t_out.hidden_states, mask, ctx.extra["projections"], hp.feature_loss)
    batch = {**batch, "_teacher_output": teacher}
    logit, logs = divergence_loss(hp.logit_divergence, ctx, batch, student)
    logs["feature"] = float(feat.detach())
    return hp.feature_weight * feat + hp.logit_weight * logit, logs
