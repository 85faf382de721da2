"""Divergences and cross-entropy computed from final hidden states, one chunk of positions at a time.

A causal LM's logits are ``hidden @ W.T (+ b)``: [B,T,V] floats, which at a
real vocabulary (49,152 for SmolLM2, 128k-152k for Llama 3 and Qwen) set the
peak memory of a training step, not the loss. The functions here take each
model's final hidden states and output projection instead (a :class:`Head`),
and for each chunk of masked positions compute the logits, the divergence of
kdbench.distill.losses (the same closed-form per-position terms), and its
gradient with respect to the student's hidden states and projection; only one
chunk of logits ever exists. Values and gradients equal the unfused path (logits
first, then the chunked divergence) to float32 rounding.

Contract, with p = softmax(teacher / tau) and q = softmax(student / tau)::

    loss = fused_divergence(terms, student: Head, teacher: Head | logits [B,T,V] | TopK,
                            mask [B,T] bool, *, temperature) -> scalar
         = tau^2 * sum_t mask_t D_t / sum_t mask_t        (as losses.divergence)

Only the student receives gradients (its hidden states, weight and bias); the
teacher is a constant. Memory beyond the models' own: one [chunk, V] float32
block of logits and its few temporaries, plus a float32 accumulator for the
projection's gradient ([V, H], the size of the weight itself).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from kdbench.distill.losses import TopK, _chunk, _teacher_rows

CHUNK_BYTES = 64 * 2**20  # float32 logits per chunk: 64 MiB (about 340 positions at V = 49,152)


class Head(NamedTuple):
    """Final hidden states and the projection to logits: logits = hidden @ weight.T (+ bias).

    hidden [B,T,H]; weight [V,H]; bias [V] or None.
    """

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None


def auto_chunk(vocab: int) -> int:
    """Positions per chunk so one chunk of float32 logits takes about CHUNK_BYTES."""
    return max(8, CHUNK_BYTES // (4 * vocab))


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """[n,H] x [V,H] -> [n,V] float32 logits."""
    out = hidden.float() @ weight.float().T
    return out if bias is None else out.add_(bias.float())


class _FusedDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher, weights, terms, temperature, chunk):
        # hidden [n,H] (masked positions only), weight [V,H], bias [V] or None; weights [n] float32;
        # teacher: Head rows [n,H'] + its weight/bias, dense logits rows [n,V], or TopK rows
        V = weight.shape[0]
        want = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        g_hidden = torch.zeros_like(hidden) if want else None
        g_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want else None
        g_bias = torch.zeros(V, dtype=torch.float32, device=weight.device) if want and bias is not None else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            idx = torch.arange(start, min(start + chunk, hidden.shape[0]), device=hidden.device)
            h = hidden.index_select(0, idx)
            if isinstance(teacher, Head):
                rows = _logits(teacher.hidden.index_select(0, idx), teacher.weight, teacher.bias)
                rows = F.log_softmax(rows if temperature == 1.0 else rows.div_(temperature), dim=-1)
            else:
                rows = _teacher_rows(teacher, idx, temperature, V)
            d, g = _chunk(terms, _logits(h, weight, bias), rows, temperature, want)
            w = weights.index_select(0, idx)
            total += (d * w).sum()
            if g is not None and g_hidden is not None and g_weight is not None:
                g.mul_(w[:, None])  # dLoss/dlogits of this chunk, [c,V]
                g_hidden.index_copy_(0, idx, (g @ weight.float()).to(g_hidden.dtype))
                g_weight.addmm_(g.T, h.float())
                if g_bias is not None:
                    g_bias += g.sum(0)
        ctx.save_for_backward(g_hidden, g_weight, g_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        g_hidden, g_weight, g_bias = ctx.saved_tensors
        scale = grad_out.to(torch.float32)
        w_dtype, b_dtype = ctx.dtypes
        gh = None if g_hidden is None else g_hidden * scale.to(g_hidden.dtype)
        gw = None if g_weight is None else (g_weight * scale).to(w_dtype)
        gb = None if g_bias is None or b_dtype is None else (g_bias * scale).to(b_dtype)
        return gh, gw, gb, None, None, None, None, None


def _masked_rows(x: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """x [B,T,...] -> its rows at the flat positions ``flat`` [n]."""
    return x.reshape(-1, *x.shape[2:]).index_select(0, flat)


def fused_divergence(
    terms: Callable,
    student: Head,
    teacher,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """tau^2 * masked mean of the divergence ``terms`` (see losses.py) between student and teacher.

    student: Head with hidden [B,T,H]; teacher: a Head, dense logits [B,T,V] or a TopK [B,T,k];
    mask [B,T] bool. Position t holds the distributions over the next token (shifting is the caller's).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    B, T, _ = student.hidden.shape
    if mask.shape != (B, T):
        raise ValueError(f"mask must be [B,T]={B, T}, got {tuple(mask.shape)}")
    V = student.weight.shape[0]
    flat = mask.reshape(-1).nonzero().squeeze(-1)
    if flat.numel() == 0:
        return student.hidden.sum() * 0.0 + student.weight.sum() * 0.0
    weights = torch.full(
        (flat.numel(),), temperature**2 / flat.numel(), dtype=torch.float32, device=student.hidden.device
    )
    if isinstance(teacher, Head):
        if teacher.weight.shape[0] != V:
            raise ValueError(
                f"teacher vocabulary {teacher.weight.shape[0]} != student vocabulary {V}; "
                "white-box losses need one vocabulary"
            )
        rows = Head(
            _masked_rows(teacher.hidden, flat).detach(),
            teacher.weight.detach(),
            None if teacher.bias is None else teacher.bias.detach(),
        )
    elif isinstance(teacher, TopK):
        rows = TopK(_masked_rows(teacher.ids, flat), _masked_rows(teacher.logprobs, flat))
    else:
        if teacher.shape[-1] != V:
            raise ValueError(f"teacher logits {tuple(teacher.shape)} do not match the student's vocabulary {V}")
        rows = _masked_rows(teacher, flat).detach()
    hidden = _masked_rows(student.hidden, flat)
    chunk = chunk_size or auto_chunk(V)
    return _FusedDivergence.apply(hidden, student.weight, student.bias, rows, weights, terms, float(temperature), chunk)


class _FusedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk):
        # hidden [n,H], targets [n] long: mean over the n positions of -log softmax(logits)[target]
        n, V = hidden.shape[0], weight.shape[0]
        g_hidden = torch.zeros_like(hidden)
        g_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        g_bias = torch.zeros(V, dtype=torch.float32, device=weight.device) if bias is not None else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk):
            idx = torch.arange(start, min(start + chunk, n), device=hidden.device)
            h, y = hidden.index_select(0, idx), targets.index_select(0, idx)
            logits = _logits(h, weight, bias)
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(-1, y[:, None])[:, 0]).sum() / n
            g = logits.sub_(lse[:, None]).exp_()  # softmax, in the logits' storage
            g[torch.arange(len(idx), device=g.device), y] -= 1.0
            g.div_(n)
            g_hidden.index_copy_(0, idx, (g @ weight.float()).to(g_hidden.dtype))
            g_weight.addmm_(g.T, h.float())
            if g_bias is not None:
                g_bias += g.sum(0)
        ctx.save_for_backward(g_hidden, g_weight, g_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        g_hidden, g_weight, g_bias = ctx.saved_tensors
        scale = grad_out.to(torch.float32)
        w_dtype, b_dtype = ctx.dtypes
        gb = None if g_bias is None or b_dtype is None else (g_bias * scale).to(b_dtype)
        return g_hidden * scale.to(g_hidden.dtype), (g_weight * scale).to(w_dtype), gb, None, None


def fused_cross_entropy(
    student: Head, input_ids: torch.Tensor, loss_mask: torch.Tensor, *, chunk_size: int | None = None
) -> torch.Tensor:
    """Mean next-token cross-entropy over masked target tokens, from hidden states (as training.causal_lm_ce).

    student.hidden [B,T,H] (position t predicts token t+1); input_ids [B,T]; loss_mask [B,T] marks targets.
    """
    target_mask = loss_mask[:, 1:]
    flat = target_mask.reshape(-1).nonzero().squeeze(-1)
    if flat.numel() == 0:
        return student.hidden.sum() * 0.0 + student.weight.sum() * 0.0
    hidden = _masked_rows(student.hidden[:, :-1], flat)
    targets = input_ids[:, 1:].reshape(-1).index_select(0, flat)
    chunk = chunk_size or auto_chunk(student.weight.shape[0])
    return _FusedCrossEntropy.apply(hidden, student.weight, student.bias, targets, chunk)
