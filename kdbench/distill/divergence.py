"""Token-level divergence KD: fkl, rkl, jsd, tvd, skl, srkl against teacher logits.

White-box: student and teacher share one vocabulary. The teacher's logits come
from the teacher model in memory, or from the feature-elicitation cache of its
top-k log-probabilities (``batch["teacher_topk_ids"/"_logprobs"]``), in which
case the teacher need not be loaded at all.

One vocabulary may still come as logits of two widths: models pad their
embedding matrix past the tokenizer (to a multiple of 64 or 128), differently
within one family (Qwen2.5: 151,936 rows for 0.5B, 152,064 for 7B; both
tokenizers hold 151,665 tokens). The rows past ``len(tokenizer)`` are no
token's, so both logit tensors are cut to the real tokens (:func:`real_tokens`)
before they are compared.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from kdbench.distill.fused import Head, Output, cross_entropy_of, cut_vocab, divergence_of, output_of, shifted, width
from kdbench.distill.losses import DEFAULT_CHUNK, TopK
from kdbench.training import StepContext


class DivergenceConfig(BaseModel):
    """Defaults: tau = 1 (GKD, MiniLLM); JSD beta = 0.5 (GKD's symmetric JSD);
    skew alpha = 0.1 (DistiLLM's best setting); no cross-entropy mixed in."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.5, ge=0, le=1)
    alpha: float = Field(0.1, ge=0, le=1)
    ce_weight: float = Field(0.0, ge=0)  # + ce_weight * cross-entropy on the labels
    chunk_size: int | None = Field(
        DEFAULT_CHUNK, ge=1, description="positions per chunk when unfused; None: about 1 MiB per [chunk, V] float32"
    )


def knobs(name: str, hp: DivergenceConfig) -> dict:
    """The keyword arguments the divergence ``name`` takes from ``hp``."""
    extra = {"jsd": {"beta": hp.beta}, "skl": {"alpha": hp.alpha}, "srkl": {"alpha": hp.alpha}}.get(name, {})
    return {"temperature": hp.temperature, "chunk_size": hp.chunk_size, **extra}


@torch.no_grad()
def teacher_targets(ctx: StepContext, batch, fused: bool) -> Output | TopK:
    """Teacher next-token distributions for the batch: cached top-k, or a forward pass (its head when the
    student's loss is fused, so the teacher's logits too exist one chunk at a time)."""
    if "teacher_topk_ids" in batch:
        return TopK(batch["teacher_topk_ids"], batch["teacher_topk_logprobs"])
    if "_teacher_output" in batch:  # already computed by the caller (e.g. hidden)
        return batch["_teacher_output"]
    assert ctx.teacher is not None, "no cached top-k for this batch and no teacher model loaded"
    out, _ = output_of(ctx.teacher, batch["input_ids"], batch["attention_mask"], fused=fused)
    return out


def real_tokens(tokenizer, *logits: torch.Tensor) -> list[torch.Tensor]:
    """Each logits tensor [..., V_i] cut to the vocabulary's real tokens: [..., n] each.

    n = min(len(tokenizer), V_1, V_2, ...): the rows past the tokenizer are embedding padding, which no
    text holds and whose width differs between models of one vocabulary. A tensor no wider than n comes
    back as it is (the tiny models: always). Views, no copies.
    """
    n = min(len(tokenizer), *(x.shape[-1] for x in logits))
    return [x[..., :n] if x.shape[-1] > n else x for x in logits]


def divergence_loss(name: str, ctx: StepContext, batch, student: Output):
    """Divergence ``name`` on the response tokens (+ optional CE), from the student's full-length logits or,
    fused, its head (kdbench.distill.fused)."""
    hp: DivergenceConfig = ctx.hp
    target = teacher_targets(ctx, batch, fused=isinstance(student, Head))
    n = len(ctx.tokenizer) if isinstance(target, TopK) else min(len(ctx.tokenizer), width(student), width(target))
    s_full = cut_vocab(student, n)
    if not isinstance(target, TopK):
        target = cut_vocab(target, n)
    mask = batch["loss_mask"][:, 1:]
    t = TopK(target.ids[:, :-1], target.logprobs[:, :-1]) if isinstance(target, TopK) else shifted(target)
    div = divergence_of(name, shifted(s_full), t, mask, **knobs(name, hp))
    logs = {name: float(div.detach())}
    if hp.ce_weight:
        ce = cross_entropy_of(student, batch["input_ids"], batch["loss_mask"])
        logs["ce"] = float(ce.detach())
        return div + hp.ce_weight * ce, logs
    return div, logs


def make_step(name: str):
    """The training step of divergence ``name`` (one of losses.DIVERGENCES)."""

    def step(ctx: StepContext, batch):
        student, _ = output_of(ctx.student, batch["input_ids"], batch["attention_mask"], fused=ctx.fused)
        return divergence_loss(name, ctx, batch, student)

    step.__name__ = f"{name}_step"
    return step
