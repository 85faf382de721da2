"""Sampling continuations for on-policy algorithms (gkd, minillm).

Prompts are recovered from a training batch (the tokens before the first
loss-masked token) and continued by the student's own distribution, or, for
MiniLLM's teacher-mixed sampling, by alpha * p + (1 - alpha) * q; no logits
processor from a model's generation config touches the draws (see
kdbench.models.sampling). The result is a new right-padded batch whose
``loss_mask`` covers the sampled tokens and a closing eos, and whose
``action_mask`` covers only tokens that were actually sampled: an eos appended
to a continuation cut at ``max_new_tokens`` was never drawn, so a policy
gradient must not treat it as an action.
"""

from __future__ import annotations

import torch

from kdbench.data import collate, pad_id
from kdbench.models.sampling import sample


def prompts_of(batch: dict[str, torch.Tensor]) -> list[list[int]]:
    """Each row's prompt: its tokens before the first loss-masked one (padding excluded). [B,T] -> B lists."""
    out = []
    for ids, attn, mask in zip(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], strict=True):
        n = int(attn.sum())
        first = int(mask[:n].nonzero()[0]) if mask[:n].any() else n
        out.append(ids[:first].tolist())
    return out


def as_batch(
    prompts: list[list[int]], continuations: list[list[int]], stopped: list[bool], eos: int, pad: int, device
) -> dict[str, torch.Tensor]:
    """prompt + continuation + eos per row, right-padded; loss_mask over continuation and eos, action_mask over
    the tokens that were sampled (the eos only where the model drew it)."""
    examples = [
        {"input_ids": p + c + [eos], "loss_mask": [0] * len(p) + [1] * (len(c) + 1)}
        for p, c in zip(prompts, continuations, strict=True)
    ]
    out = collate(examples, pad)
    action = out["loss_mask"].clone()
    for i, (p, c, s) in enumerate(zip(prompts, continuations, stopped, strict=True)):
        if not s:
            action[i, len(p) + len(c)] = False
    out["action_mask"] = action
    return {k: v.to(device) for k, v in out.items()}


def student_batch(ctx, batch, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0):
    """The batch's prompts continued by the student's own samples (GKD's on-policy data)."""
    return mixture_batch(ctx, batch, max_new_tokens, alpha=0.0, temperature=temperature, top_p=top_p)


def mixture_batch(ctx, batch, max_new_tokens: int, alpha: float, *, temperature: float = 1.0, top_p: float = 1.0):
    """Continuations sampled token by token from alpha * p_teacher + (1 - alpha) * q_student (MiniLLM's
    teacher-mixed sampling; alpha = 0 is the student alone)."""
    tok = ctx.tokenizer
    student = getattr(ctx.student, "module", ctx.student)
    prompts = prompts_of(batch)
    pad = pad_id(tok)
    conts, stopped = sample(
        student,
        prompts,
        max_new_tokens=max_new_tokens,
        eos=tok.eos_token_id,
        pad=pad,
        temperature=temperature,
        top_p=top_p,
        teacher=ctx.teacher if alpha > 0 else None,
        alpha=alpha,
        generator=ctx.generator,
        vocab=len(tok),  # real tokens only, never an embedding matrix's padding rows
    )
    return as_batch(prompts, conts, stopped, tok.eos_token_id, pad, ctx.device)
