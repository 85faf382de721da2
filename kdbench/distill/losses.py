"""Token-level divergences between teacher and student, as pure functions.

Contract (every function here, keyed by its name in ``DIVERGENCES``)::

    loss = fn(student_logits [B,T,V], teacher_logits [B,T,V], mask [B,T] bool,
              *, temperature=1.0, <its own knob>) -> scalar tensor

with p = softmax(teacher / tau) and q = softmax(student / tau), computed in
float32 whatever the input dtype, and

    loss = tau^2 * sum_t mask_t * D_t / sum_t mask_t

where D_t is the true divergence at position t (a full KL, not a cross-entropy
with the teacher's entropy dropped, so identical inputs give exactly 0).
Position t holds the distributions over the *next* token; aligning (shifting)
logits and mask is the caller's job.

Memory: positions are processed in chunks of ``chunk_size`` rows (None, the default: as
many as make one [chunk, V] float32 temporary about CHUNK_BYTES, at least 8). Each chunk's
gradient with respect to the student logits is computed in closed form during
the forward pass and written into one buffer shaped like the logits (the
buffer backward hands on as the logits' gradient), so the float32 temporaries
(log-softmaxes, mixtures, products) exist for one chunk at a time: peak memory
does not grow with T x V, and gradients are exact. Only the student receives a
gradient; the teacher is treated as a constant.

Teacher logits may also be a :class:`TopK` (ids and log-probabilities of the
teacher's k most likely tokens, from the feature-elicitation cache). The
divergence is then taken between the (k+1)-bin coarsenings of p and q: the k
listed tokens plus one bin holding the rest of the mass, so the missing tail is
accounted for instead of silently dropped. Cached log-probs are stored at tau = 1
and tempered here like the dense teacher (see :func:`temper_topk`), so both
distributions always see the same temperature.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from kdbench.training import causal_lm_ce  # noqa: F401  (re-exported: the cross-entropy beside the divergences)

DEFAULT_CHUNK = None  # rows per chunk: None sizes chunks by bytes (chunk_rows)
CHUNK_BYTES = 1 << 20  # one [chunk, V] float32 temporary: 8 rows at V = 32,000, 128 at V = 2,048
MIN_CHUNK = 8  # rows: fewer leaves the loop's per-chunk overhead larger than the work (V >= 32,768)
_FLOOR = -1e30  # stands in for log(0) so 0 * log(0) terms are 0, not NaN
TAIL_FLOOR = 1e-6  # smallest tail mass a top-k teacher is taken to have (see _bins)


class TopK(NamedTuple):
    """A teacher's top-k next-token distribution: ids [B,T,k] long, logprobs [B,T,k] float."""

    ids: torch.Tensor
    logprobs: torch.Tensor


# ---- per-position divergences and their gradients ------------------------------------
#
# Each returns (D [n], h [n, V]) for log-distributions ls (student) and lt (teacher) [n, V]:
# D is the divergence per row and h = q * dD/dq, its gradient with respect to the student's
# probabilities scaled by q. Through the softmax, dD/ds = (h - q * sum_v h_v) / tau: exact,
# with no autograd graph, so a chunk needs only a handful of [n, V] temporaries.


def _mix(la: torch.Tensor, lb: torch.Tensor, w: float) -> torch.Tensor:
    """log(w * a + (1 - w) * b), computed stably in log space."""
    if w <= 0.0:
        return lb
    if w >= 1.0:
        return la
    return torch.logaddexp(la + math.log(w), lb + math.log1p(-w))


def fkl_terms(ls, lt):
    """Forward KL(p || q): mean-seeking; word-level KD (Hinton et al.; Kim & Rush)."""
    p = lt.exp()
    d = lt.sub_(ls).mul_(p).sum(-1)  # p log(p / q), in the teacher rows' storage (they are not needed after)
    return d, p.neg_()


def rkl_terms(ls, lt):
    """Reverse KL(q || p): mode-seeking (MiniLLM's objective)."""
    q = ls.exp()
    q_log = lt.neg_().add_(ls).mul_(q)  # q log(q / p), in the teacher rows' storage
    d = q_log.sum(-1)
    return d, q_log.add_(q)  # q (log(q / p) + 1)


def jsd_terms(ls, lt, beta: float = 0.5):
    """Generalised JSD: beta KL(p || M) + (1 - beta) KL(q || M), M = beta p + (1 - beta) q.

    At the ends it is what GKD's authors and TRL's ``generalized_jsd_loss`` take it to
    be: beta = 0 is forward KL(p || q), beta = 1 reverse KL(q || p). (The formula
    itself collapses to 0 there, which would train on a loss of exactly zero.)
    """
    if beta <= 0.0:
        return fkl_terms(ls, lt)
    if beta >= 1.0:
        return rkl_terms(ls, lt)
    lm = _mix(lt, ls, beta)
    t_part = (lt.exp() * (lt - lm)).sum(-1)
    q_log = (ls - lm).mul_(ls.exp())  # q log(q / M)
    d = beta * t_part + (1.0 - beta) * q_log.sum(-1)
    return d, q_log.mul_(1.0 - beta)  # dD/dq = (1 - beta) log(q / M)


def tvd_terms(ls, lt):
    """Total variation distance: 0.5 * sum_v |p - q| (Wen et al., f-divergence KD)."""
    q = ls.exp()
    diff = lt.exp_().neg_().add_(q)  # q - p, in the teacher rows' own storage (they are not needed after)
    d = 0.5 * torch.linalg.vector_norm(diff, 1, dim=-1)  # sum |q - p| without an |q - p| temporary
    return d, diff.sign_().mul_(q).mul_(0.5)


def skl_terms(ls, lt, alpha: float = 0.1):
    """Skew KL (DistiLLM): KL(p || alpha p + (1 - alpha) q)."""
    lm = _mix(lt, ls, alpha)
    d = (lt.exp() * (lt - lm)).sum(-1)
    return d, (ls + lt).sub_(lm).exp_().mul_(-(1.0 - alpha))


def srkl_terms(ls, lt, alpha: float = 0.1):
    """Skew reverse KL (DistiLLM): KL(q || alpha q + (1 - alpha) p).

    The mixture leans on the teacher, as DistiLLM's ``skewed_reverse_kl`` builds it
    (``(1 - lam) * teacher + lam * student``): alpha = 0 is reverse KL, alpha = 1 is 0.
    dD/dq = log(q / M) + 1 - alpha q / M, so q dD/dq = q (log(q / M) + 1) - alpha q^2 / M.
    """
    lm = _mix(ls, lt, alpha)  # log(alpha q + (1 - alpha) p)
    q = ls.exp()
    log_ratio = ls - lm
    d = (q * log_ratio).sum(-1)
    h = (2 * ls).sub_(lm).exp_().mul_(-alpha)  # -alpha q^2 / M
    return d, h.add_(log_ratio.add_(1.0).mul_(q))


# ---- chunked driver -----------------------------------------------------------------


def temper_topk(lp_k: torch.Tensor, vocab: int, temperature: float) -> torch.Tensor:
    """Top-k log-probs of softmax(teacher / tau), from the top-k log-probs at tau = 1. [n,k] -> [n,k]

    The listed tokens are tempered exactly (p_i^(1/tau), renormalised). The tail's
    total mass is known but not how it splits over its V - k tokens; it is taken
    to be spread evenly (each holds tail / (V - k)) and tempered like that. With
    k = V there is no tail and the result equals the dense tempered teacher.
    """
    if temperature == 1.0:
        return lp_k
    head = lp_k / temperature
    rest = vocab - lp_k.shape[-1]
    if rest <= 0:
        return head - torch.logsumexp(head, dim=-1, keepdim=True)
    tail = torch.log(-torch.expm1(torch.logsumexp(lp_k, dim=-1, keepdim=True).clamp_max(0.0)))
    tail = tail.clamp_min(math.log(TAIL_FLOOR))
    tail_tau = math.log(rest) + (tail - math.log(rest)) / temperature
    return head - torch.logsumexp(torch.cat([head, tail_tau], dim=-1), dim=-1, keepdim=True)


def chunk_rows(vocab: int, chunk_size: int | None = None, budget: int = CHUNK_BYTES) -> int:
    """Rows per chunk: ``chunk_size`` when given, else about ``budget`` bytes of float32 per [chunk, V] temporary.

    A byte budget rather than a row count keeps the temporaries a small fraction of the [N, V] gradient
    buffer at every vocabulary: the few chunk-sized temporaries, and what the allocator keeps of them, were
    what separated the divergence's peak memory from that buffer (32 rows at V = 32,000: 4 MiB each).
    """
    return chunk_size or max(MIN_CHUNK, budget // (4 * vocab))


def _teacher_rows(teacher, idx: torch.Tensor, temperature: float, vocab: int):
    if isinstance(teacher, TopK):
        lp = teacher.logprobs.index_select(0, idx).float()
        return teacher.ids.index_select(0, idx), temper_topk(lp, vocab, temperature)
    rows = teacher.index_select(0, idx).float()
    return F.log_softmax(rows if temperature == 1.0 else rows.div_(temperature), dim=-1).clamp_min_(_FLOOR)


def _bins(ls: torch.Tensor, ids: torch.Tensor, lt_k: torch.Tensor):
    """Student and teacher log-probs on k top-k bins + one tail bin, and the student's tail.

    The student's tail mass is summed exactly over the unlisted tokens; the
    teacher's is 1 - (listed mass). Both are floored at TAIL_FLOOR so float
    rounding in a tail that is really empty (k = V, or a peaked teacher) cannot
    turn into a huge p_tail * log(p_tail / q_tail) term.
    """
    floor = math.log(TAIL_FLOOR)
    s_tail = torch.logsumexp(ls.scatter(-1, ids, float("-inf")), dim=-1, keepdim=True).clamp_min(floor)
    t_head = torch.logsumexp(lt_k, dim=-1, keepdim=True).clamp_max(0.0)
    t_tail = torch.log(-torch.expm1(t_head)).clamp_min(floor)
    return (torch.cat([ls.gather(-1, ids), s_tail], dim=-1), torch.cat([lt_k, t_tail], dim=-1).clamp_min(_FLOOR))


def _chunk(terms, s: torch.Tensor, t, temperature: float, want_grad: bool):
    """(D [n], dD/ds [n, V] or None) for student logits s [n, V] (a float32 copy this function owns;
    it may be overwritten) and teacher rows t (also owned: terms may reuse their storage)."""
    ls = F.log_softmax(s if temperature == 1.0 else s.div_(temperature), dim=-1)
    del s  # one chunk-sized temporary fewer while the terms are computed
    if not isinstance(t, tuple):
        d, h = terms(ls, t)
        if not want_grad:
            return d, None
        total = h.sum(-1, keepdim=True)
        return d, h.sub_(ls.exp_().mul_(total)).div_(temperature)  # ls is not needed any more
    ids, lt_k = t
    ls_b, lt_b = _bins(ls, ids, lt_k)
    d, h = terms(ls_b, lt_b)
    if not want_grad:
        return d, None
    # each token's gradient comes from its bin: h_b for a listed token, q_j * h_tail / Q_tail in the tail
    q = ls.exp_()
    full = q * (h[:, -1:] / ls_b[:, -1:].exp())
    full.scatter_(-1, ids, h[:, :-1])
    return d, full.sub_(q.mul_(h.sum(-1, keepdim=True))).div_(temperature)


class _ChunkedDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher_dense, teacher_ids, teacher_lp, weights, terms, temperature, chunk):
        # student [N,V]; teacher dense [N,V] or (ids [N,k], logprobs [N,k]); weights [N] float32
        teacher = TopK(teacher_ids, teacher_lp) if teacher_dense is None else teacher_dense
        needs_grad = ctx.needs_input_grad[0]
        V = student.shape[-1]
        grad = torch.zeros_like(student) if needs_grad else None
        total = torch.zeros((), dtype=torch.float32, device=student.device)
        rows = weights.nonzero().squeeze(-1)
        for start in range(0, rows.numel(), chunk):
            idx = rows[start : start + chunk]
            w = weights.index_select(0, idx)
            d, g = _chunk(
                terms,
                student.index_select(0, idx).float(),
                _teacher_rows(teacher, idx, temperature, V),
                temperature,
                needs_grad,
            )
            total += (d * w).sum()
            if grad is not None and g is not None:  # needs_grad
                grad.index_copy_(0, idx, g.mul_(w[:, None]).to(grad.dtype))
        ctx.save_for_backward(grad) if needs_grad else None
        return total

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        if grad_out.item() != 1.0:  # the common case (loss.backward()) allocates nothing
            grad = grad * grad_out.to(grad.dtype)
        return grad, None, None, None, None, None, None, None


def divergence(
    terms: Callable,
    student_logits: torch.Tensor,
    teacher_logits,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = DEFAULT_CHUNK,
) -> torch.Tensor:
    """tau^2 * masked mean over positions of the divergence ``terms`` computes; see module doc."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (or None: sized by bytes), got {chunk_size}")
    B, T, V = student_logits.shape
    if mask.shape != (B, T):
        raise ValueError(f"mask must be [B,T]={B, T}, got {tuple(mask.shape)}")
    denom = mask.sum()
    if denom == 0:
        return student_logits.sum() * 0.0
    weights = mask.reshape(-1).float() * (temperature**2 / denom.float())
    student = student_logits.reshape(B * T, V)
    if isinstance(teacher_logits, TopK):
        k = teacher_logits.ids.shape[-1]
        dense, ids, lp = None, teacher_logits.ids.reshape(B * T, k), teacher_logits.logprobs.reshape(B * T, k)
    else:
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(
                f"teacher logits {tuple(teacher_logits.shape)} != student logits {(B, T, V)}; "
                "white-box losses need one vocabulary"
            )
        dense, ids, lp = teacher_logits.detach().reshape(B * T, V), None, None
    chunk = chunk_rows(V, chunk_size)
    return _ChunkedDivergence.apply(student, dense, ids, lp, weights, terms, float(temperature), chunk)


def fkl(student_logits, teacher_logits, mask, *, temperature=1.0, chunk_size=DEFAULT_CHUNK):
    """Forward KL(p || q) per position, masked mean, times tau^2."""
    return divergence(fkl_terms, student_logits, teacher_logits, mask, temperature=temperature, chunk_size=chunk_size)


def rkl(student_logits, teacher_logits, mask, *, temperature=1.0, chunk_size=DEFAULT_CHUNK):
    """Reverse KL(q || p) per position, masked mean, times tau^2."""
    return divergence(rkl_terms, student_logits, teacher_logits, mask, temperature=temperature, chunk_size=chunk_size)


def jsd(student_logits, teacher_logits, mask, *, temperature=1.0, beta=0.5, chunk_size=DEFAULT_CHUNK):
    """Generalised Jensen-Shannon divergence with weight beta on the teacher (GKD); beta = 0 is forward KL,
    beta = 1 reverse KL (TRL's convention)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    return divergence(
        lambda ls, lt: jsd_terms(ls, lt, beta),
        student_logits,
        teacher_logits,
        mask,
        temperature=temperature,
        chunk_size=chunk_size,
    )


def tvd(student_logits, teacher_logits, mask, *, temperature=1.0, chunk_size=DEFAULT_CHUNK):
    """Total variation distance per position, masked mean, times tau^2."""
    return divergence(tvd_terms, student_logits, teacher_logits, mask, temperature=temperature, chunk_size=chunk_size)


def skl(student_logits, teacher_logits, mask, *, temperature=1.0, alpha=0.1, chunk_size=DEFAULT_CHUNK):
    """Skew KL(p || alpha p + (1 - alpha) q) (DistiLLM, default alpha = 0.1)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return divergence(
        lambda ls, lt: skl_terms(ls, lt, alpha),
        student_logits,
        teacher_logits,
        mask,
        temperature=temperature,
        chunk_size=chunk_size,
    )


def srkl(student_logits, teacher_logits, mask, *, temperature=1.0, alpha=0.1, chunk_size=DEFAULT_CHUNK):
    """Skew reverse KL(q || alpha q + (1 - alpha) p) (DistiLLM, default alpha = 0.1)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return divergence(
        lambda ls, lt: srkl_terms(ls, lt, alpha),
        student_logits,
        teacher_logits,
        mask,
        temperature=temperature,
        chunk_size=chunk_size,
    )


DIVERGENCES: dict[str, Callable[..., torch.Tensor]] = {
    "fkl": fkl,
    "rkl": rkl,
    "jsd": jsd,
    "tvd": tvd,
    "skl": skl,
    "srkl": srkl,
}


def shift(logits: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align next-token logits with the tokens they predict: (logits[:, :-1], mask[:, 1:])."""
    return logits[:, :-1], loss_mask[:, 1:]
