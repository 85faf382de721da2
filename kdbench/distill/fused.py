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

from kdbench.distill.losses import (
    DEFAULT_CHUNK,
    DIVERGENCES,
    TopK,
    _chunk,
    _teacher_rows,
    chunk_rows,
    fkl_terms,
    jsd_terms,
    rkl_terms,
    skl_terms,
    srkl_terms,
    tvd_terms,
)
from kdbench.models.sampling import token_logprobs
from kdbench.training import causal_lm_ce

CHUNK_BYTES = (
    32 * 2**20
)  # float32 logits per chunk: 32 MiB (about 170 positions at V = 49,152); see benchmarks/fused_step.py


class Head(NamedTuple):
    """Final hidden states and the projection to logits: logits = hidden @ weight.T (+ bias).

    hidden [B,T,H]; weight [V,H]; bias [V] or None.
    """

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None


def auto_chunk(vocab: int) -> int:
    """Positions per chunk so one chunk of float32 logits takes about CHUNK_BYTES."""
    return chunk_rows(vocab, budget=CHUNK_BYTES)


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """[n,H] x [V,H] -> [n,V] float32 logits."""
    out = hidden.float() @ weight.float().T
    return out if bias is None else out.add_(bias.float())


def _scaled(g: torch.Tensor | None, grad_out: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor | None:
    """grad_out * g in ``dtype`` (None: g's own). g itself when that is the same tensor: loss.backward() (a
    grad_out of 1) with float32 weights, the common case, then allocates no second [V,H] copy of the gradient."""
    if g is None:
        return None
    dtype = dtype or g.dtype
    if grad_out.item() == 1.0 and g.dtype == dtype:
        return g
    return (g * grad_out.to(torch.float32)).to(dtype)


def _accumulate(g, idx, h, weight, g_hidden, g_weight, g_bias) -> None:
    """Add one chunk's dLoss/dlogits ``g`` [c,V] into the hidden-state [N,H], weight [V,H] and bias [V] grads."""
    g_hidden.index_copy_(0, idx, (g @ weight.float()).to(g_hidden.dtype))
    g_weight.addmm_(g.T, h.float())
    if g_bias is not None:
        g_bias += g.sum(0)


def _saved_grads(ctx, grad_out) -> tuple:
    """backward's (hidden, weight, bias) gradients from what forward saved, scaled by grad_out."""
    g_hidden, g_weight, g_bias = ctx.saved_tensors
    w_dtype, b_dtype = ctx.dtypes
    gb = None if b_dtype is None else _scaled(g_bias, grad_out, b_dtype)
    return _scaled(g_hidden, grad_out, None), _scaled(g_weight, grad_out, w_dtype), gb


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
                _accumulate(g, idx, h, weight, g_hidden, g_weight, g_bias)
        ctx.save_for_backward(g_hidden, g_weight, g_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        return *_saved_grads(ctx, grad_out), None, None, None, None, None


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
            _accumulate(g, idx, h, weight, g_hidden, g_weight, g_bias)
        ctx.save_for_backward(g_hidden, g_weight, g_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        return *_saved_grads(ctx, grad_out), None, None


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


class _FusedTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, tokens, chunk):
        # hidden [n,H], tokens [n] -> log softmax(hidden @ W.T + b)[token] [n]; logits are recomputed in backward
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            sl = slice(start, start + chunk)
            logits = _logits(hidden[sl], weight, bias)
            out[sl] = logits.gather(-1, tokens[sl, None])[:, 0] - torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(hidden, weight, bias, tokens)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, tokens = ctx.saved_tensors
        g_hidden = torch.empty_like(hidden)
        g_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        g_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if bias is not None else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            sl = slice(start, start + ctx.chunk)
            logits = _logits(hidden[sl], weight, bias)
            g = torch.softmax(logits, dim=-1).neg_()  # d log q(y) / d logits = onehot(y) - softmax
            g[torch.arange(g.shape[0], device=g.device), tokens[sl]] += 1.0
            g.mul_(grad_out[sl].float()[:, None])
            g_hidden[sl] = (g @ weight.float()).to(g_hidden.dtype)
            g_weight.addmm_(g.T, hidden[sl].float())
            if g_bias is not None:
                g_bias += g.sum(0)
        gb = None if g_bias is None or bias is None else g_bias.to(bias.dtype)
        return g_hidden, g_weight.to(weight.dtype), gb, None, None


def fused_token_logprobs(student: Head, tokens: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    """log softmax(logits)[tokens] from hidden states: hidden [B,T,H], tokens [B,T] -> [B,T] float32.

    The backward pass recomputes each chunk's logits instead of keeping them (one more matmul, no [B,T,V]).
    """
    B, T, H = student.hidden.shape
    chunk = chunk_size or auto_chunk(student.weight.shape[0])
    out = _FusedTokenLogprobs.apply(
        student.hidden.reshape(B * T, H), student.weight, student.bias, tokens.reshape(-1), chunk
    )
    return out.reshape(B, T)


# ---- what algorithms call: logits or a Head, whichever the step computed ---------------------------

Output = torch.Tensor | Head  # logits [B,T,V], or the head to compute them from


def output_of(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, fused: bool, hidden_states: bool = False
):
    """(logits or Head, the model's output object) for a forward pass of ``model`` (hidden_states: keep
    every layer's hidden states in the output, as hidden needs).

    Fused: the model computes the logits of the last position only (``logits_to_keep=1``) and the
    loss works from its final hidden states (``hidden_states[-1]``, after the final norm) and output
    projection. The call still goes through ``model`` itself (an accelerate/DDP wrapper keeps
    synchronising gradients). Models whose logits are not a plain projection of the last hidden state
    (final logit soft-capping, a logit scale) and models without ``logits_to_keep`` get full logits.
    """
    base = getattr(model, "module", model)
    if fused and supports_fused(base):
        out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, output_hidden_states=True)
        head = base.get_output_embeddings()
        return Head(out.hidden_states[-1], head.weight, head.bias), out
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden_states)
    return out.logits, out


def supports_fused(model) -> bool:
    """Whether ``model``'s logits are its output projection of ``hidden_states[-1]`` and it can skip them."""
    import inspect

    model = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft (LoRA) wrapper
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        return False
    cfg = getattr(model, "config", None)
    text = cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg
    if getattr(text, "final_logit_softcapping", None) or getattr(text, "logit_scale", None) not in (None, 1, 1.0):
        return False
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def shifted(x: Output) -> Output:
    """Drop the last position (it predicts past the sequence): [B,T,...] -> [B,T-1,...]."""
    return Head(x.hidden[:, :-1], x.weight, x.bias) if isinstance(x, Head) else x[:, :-1]


def cut_vocab(x: Output, n: int) -> Output:
    """Only the first n vocabulary rows (the tokenizer's real tokens; the rest is embedding padding)."""
    if isinstance(x, Head):
        if x.weight.shape[0] <= n:
            return x
        return Head(x.hidden, x.weight[:n], None if x.bias is None else x.bias[:n])
    return x[..., :n] if x.shape[-1] > n else x


def width(x: Output) -> int:
    return x.weight.shape[0] if isinstance(x, Head) else x.shape[-1]


def divergence_of(
    name: str,
    student: Output,
    teacher,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = DEFAULT_CHUNK,
    beta: float = 0.5,
    alpha: float = 0.1,
) -> torch.Tensor:
    """Divergence ``name`` of losses.DIVERGENCES (its knobs beta / alpha), fused when the student is a Head."""
    if not isinstance(student, Head):
        knob = {"jsd": {"beta": beta}, "skl": {"alpha": alpha}, "srkl": {"alpha": alpha}}.get(name, {})
        return DIVERGENCES[name](student, teacher, mask, temperature=temperature, chunk_size=chunk_size, **knob)
    terms = {
        "fkl": fkl_terms,
        "rkl": rkl_terms,
        "tvd": tvd_terms,
        "jsd": lambda ls, lt: jsd_terms(ls, lt, beta),
        "skl": lambda ls, lt: skl_terms(ls, lt, alpha),
        "srkl": lambda ls, lt: srkl_terms(ls, lt, alpha),
    }[name]
    return fused_divergence(terms, student, teacher, mask, temperature=temperature)


def cross_entropy_of(student: Output, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy on the masked targets, fused when the student is a Head."""
    if isinstance(student, Head):
        return fused_cross_entropy(student, input_ids, loss_mask)
    return causal_lm_ce(student, input_ids, loss_mask)


def token_logprobs_of(student: Output, tokens: torch.Tensor) -> torch.Tensor:
    """log q(token) per position [B,T], fused when the student is a Head."""
    return fused_token_logprobs(student, tokens) if isinstance(student, Head) else token_logprobs(student, tokens)
