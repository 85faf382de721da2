"""uld: Universal Logit Distillation (Boizard et al., 2024), for a student with another tokenizer.

The divergences of losses.py compare p(v) and q(v) token by token, so teacher
and student must share a vocabulary. ULD ("Towards Cross-Tokenizer
Distillation: the Universal Logit Distillation Loss for LLMs") compares the two
next-token distributions as sets of probabilities instead: each sorted in
decreasing order, the shorter vocabulary padded with zeros, and

    W(p, q) = sum_k | p_(k) - q_(k) |      (p_(k): the k-th largest probability)

which is the closed form the paper derives for the Wasserstein-1 distance
between the two distributions when moving mass between any two tokens costs
the same. It is blind to which token carries which probability: it passes on
the teacher's confidence profile (how peaked, how spread out), while the
cross-entropy on the teacher's text teaches the tokens themselves.

Alignment, as in the paper: both models read the same (prompt, response) text,
each through its own chat template and tokenizer (an example carries the
teacher's tokens as ``teacher_input_ids`` / ``teacher_loss_mask``). The k-th
response token of one is paired with the k-th of the other, for the first
min(n_teacher, n_student) tokens of the response; at each pair the compared
distributions are the ones predicting that token (the logits one position
earlier). Then

    loss = ce_weight * CE(student, its own tokens of the response) + weight * mean over pairs of W(p, q)

Defaults are the authors' (their code, Nicolas-BZRD/llm-recipes,
``configs/distillation.py``, and its README's example run): weight lambda =
1.5 (``distil_factor``), cross-entropy weight 1, both temperatures 1, the
closing token kept. One difference: the mean is over all aligned positions of
a batch, as every other loss here averages tokens, where the authors average
each sequence first. Needs the teacher in memory (its logits on its own tokens).

Memory: sorting is per position, over the whole vocabulary, so positions go
through in chunks of ``chunk_size``; each chunk's gradient with respect to the
student logits is written in closed form during the forward pass (as in
losses.py), so no sort indices or [N, V] temporaries outlive their chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from kdbench.data import tokenize_example
from kdbench.distill.losses import causal_lm_ce
from kdbench.training import StepContext

SORT_CHUNK = 32  # aligned positions sorted at once (two [chunk, V] sorts)


class ULDConfig(BaseModel):
    """Defaults: the authors' code (llm-recipes, configs/distillation.py)."""

    model_config = ConfigDict(extra="forbid")
    weight: float = Field(1.5, ge=0, description="lambda, the weight of the ULD term (distil_factor)")
    ce_weight: float = Field(1.0, ge=0, description="weight of the cross-entropy on the student's tokens")
    student_temperature: float = Field(1.0, gt=0, description="softmax temperature of the student's logits")
    teacher_temperature: float = Field(1.0, gt=0, description="softmax temperature of the teacher's logits")
    chunk_size: int = Field(SORT_CHUNK, ge=1, description="aligned positions sorted at once")


# ---- the loss, as pure functions ----------------------------------------------------------------


def align(student_mask: torch.Tensor, teacher_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat row indices of the aligned positions. student_mask [B,Ts], teacher_mask [B,Tt] bool -> ([N], [N]).

    In each row b, the k-th marked student position is paired with the k-th marked teacher position,
    for k < min(marked student, marked teacher); indices are into the [B*Ts] and [B*Tt] flattenings.
    """
    if student_mask.shape[0] != teacher_mask.shape[0]:
        raise ValueError(f"masks of {student_mask.shape[0]} and {teacher_mask.shape[0]} rows")
    Ts, Tt = student_mask.shape[1], teacher_mask.shape[1]
    s_rows, t_rows = [], []
    for b in range(student_mask.shape[0]):
        s_pos, t_pos = student_mask[b].nonzero()[:, 0], teacher_mask[b].nonzero()[:, 0]
        k = min(s_pos.numel(), t_pos.numel())
        s_rows.append(b * Ts + s_pos[:k])
        t_rows.append(b * Tt + t_pos[:k])
    return torch.cat(s_rows), torch.cat(t_rows)


class _SortedL1(torch.autograd.Function):
    """Mean over pairs of sum_k |q_(k) - p_(k)|, its student gradient computed chunk by chunk in the forward.

    With the sorting permutation fixed (it is, almost everywhere), dW/dq_j = sign(q_j - p_(rank of j)),
    where a student rank past the teacher's vocabulary meets a padded 0; through q = softmax(s / tau),
    dW/ds = (h - q * sum(h)) / tau with h = q * dW/dq.
    """

    @staticmethod
    def forward(ctx, student, teacher, s_rows, t_rows, tau_s, tau_t, chunk):
        # student [Ns,Vs] (carries the gradient), teacher [Nt,Vt]; s_rows, t_rows [N] long
        needs_grad = ctx.needs_input_grad[0]
        n_pairs = s_rows.numel()
        Vs, Vt = student.shape[-1], teacher.shape[-1]
        grad = torch.zeros_like(student) if needs_grad else None
        total = torch.zeros((), dtype=torch.float32, device=student.device)
        for start in range(0, n_pairs, chunk):
            si, ti = s_rows[start : start + chunk], t_rows[start : start + chunk]
            q = F.softmax(student.index_select(0, si).float().div_(tau_s), dim=-1)
            q_sorted, order = q.sort(dim=-1, descending=True)
            p = F.softmax(teacher.index_select(0, ti).float().div_(tau_t), dim=-1)
            p_sorted = p.sort(dim=-1, descending=True).values
            del p
            if Vs < Vt:
                q_sorted = F.pad(q_sorted, (0, Vt - Vs))
            elif Vt < Vs:
                p_sorted = F.pad(p_sorted, (0, Vs - Vt))
            diff = q_sorted.sub_(p_sorted)
            del p_sorted
            total += diff.abs().sum() / n_pairs
            if grad is not None:
                g = torch.empty_like(q).scatter_(-1, order, diff[:, :Vs].sign_())  # dW/dq in vocabulary order
                h = g.mul_(q)
                ds = h.sub_(q.mul_(h.sum(-1, keepdim=True))).div_(tau_s * n_pairs)
                grad.index_add_(0, si, ds.to(grad.dtype))
        ctx.save_for_backward(grad) if needs_grad else None
        return total

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        if grad_out.item() != 1.0:
            grad = grad * grad_out.to(grad.dtype)
        return grad, None, None, None, None, None, None


def uld_distance(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    chunk_size: int = SORT_CHUNK,
) -> torch.Tensor:
    """Mean over rows of W(softmax(teacher / tau_t), softmax(student / tau_s)).

    student_logits [N,Vs], teacher_logits [N,Vt] (any two vocabulary sizes) -> scalar; only the student
    gets a gradient. 0 when N = 0.
    """
    if student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError(f"{student_logits.shape[0]} student rows, {teacher_logits.shape[0]} teacher rows")
    rows = torch.arange(student_logits.shape[0], device=student_logits.device)
    return _sorted_l1(student_logits, teacher_logits, rows, rows, student_temperature, teacher_temperature, chunk_size)


def uld_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_mask: torch.Tensor,
    teacher_mask: torch.Tensor,
    *,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    chunk_size: int = SORT_CHUNK,
) -> torch.Tensor:
    """The ULD term of a batch: W averaged over aligned positions (see :func:`align`).

    student_logits [B,Ts,Vs], teacher_logits [B,Tt,Vt]; student_mask [B,Ts], teacher_mask [B,Tt] bool,
    marking the positions whose next-token distribution is compared (shifting is the caller's job, as
    in losses.py) -> scalar.
    """
    B, Ts, Vs = student_logits.shape
    if student_mask.shape != (B, Ts) or teacher_mask.shape != teacher_logits.shape[:2]:
        raise ValueError("each mask must be [B,T] of its logits")
    s_rows, t_rows = align(student_mask.bool(), teacher_mask.bool())
    return _sorted_l1(
        student_logits.reshape(B * Ts, Vs),
        teacher_logits.reshape(-1, teacher_logits.shape[-1]),
        s_rows.to(student_logits.device),
        t_rows.to(teacher_logits.device),
        student_temperature,
        teacher_temperature,
        chunk_size,
    )


def _sorted_l1(student, teacher, s_rows, t_rows, tau_s: float, tau_t: float, chunk: int) -> torch.Tensor:
    if tau_s <= 0 or tau_t <= 0:
        raise ValueError(f"temperatures must be > 0, got {tau_s} and {tau_t}")
    if s_rows.numel() == 0:
        return student.sum() * 0.0
    return _SortedL1.apply(student, teacher.detach(), s_rows, t_rows, float(tau_s), float(tau_t), chunk)


# ---- training -------------------------------------------------------------------------------------


def add_teacher_tokens(examples: list[dict], rows: list[dict], teacher_tokenizer, max_length: int) -> list[dict]:
    """Each example with the teacher's tokenization of its row's text (teacher_input_ids, teacher_loss_mask)."""
    out = []
    for e, r in zip(examples, rows, strict=True):
        t = tokenize_example(teacher_tokenizer, r["prompt"], r["response"], max_length=max_length)
        out.append({**e, "teacher_input_ids": t["input_ids"], "teacher_loss_mask": t["loss_mask"]})
    return out


def _predicting(loss_mask: torch.Tensor) -> torch.Tensor:
    """The positions whose logits predict a masked token: loss_mask shifted left by one. [B,T] -> [B,T]"""
    return torch.cat([loss_mask[:, 1:], torch.zeros_like(loss_mask[:, :1])], dim=1).bool()


def uld_step(ctx: StepContext, batch):
    hp: ULDConfig = ctx.hp
    logits = ctx.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert ctx.teacher is not None, "uld needs the teacher model (teacher_model=True in the registry)"
    t_attn = batch["teacher_attention_mask"]
    # collate pads with the student's pad id, which need not exist in the teacher's vocabulary; padding sits
    # after each row's tokens, so under causal attention its ids change nothing: 0 is always a valid one
    t_ids = batch["teacher_input_ids"].masked_fill(t_attn == 0, 0)
    with torch.no_grad():
        t_logits = ctx.teacher(input_ids=t_ids, attention_mask=t_attn).logits
    dist = uld_loss(
        logits,
        t_logits,
        _predicting(batch["loss_mask"]),
        _predicting(batch["teacher_loss_mask"]),
        student_temperature=hp.student_temperature,
        teacher_temperature=hp.teacher_temperature,
        chunk_size=hp.chunk_size,
    )
    ce = causal_lm_ce(logits, batch["input_ids"], batch["loss_mask"])
    return hp.ce_weight * ce + hp.weight * dist, {"uld": float(dist.detach()), "ce": float(ce.detach())}
