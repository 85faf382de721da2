"""Sampling continuations for on-policy algorithms (gkd, minillm).

Prompts are recovered from a training batch (the tokens before the first
loss-masked token), left-padded, and continued by the student, or, for
MiniLLM's teacher-mixed sampling, by the mixture alpha * p + (1 - alpha) * q.
The result is a new right-padded batch whose loss mask covers the sampled
tokens and the closing eos.
"""

from __future__ import annotations

import torch

from kdbench.data import collate


def prompts_of(batch: dict[str, torch.Tensor]) -> list[list[int]]:
    out = []
    for ids, attn, mask in zip(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], strict=True):
        n = int(attn.sum())
        first = int(mask[:n].nonzero()[0]) if mask[:n].any() else n
        out.append(ids[:first].tolist())
    return out


def _left_pad(prompts: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attn = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        attn[i, width - len(p):] = 1
    return ids.to(device), attn.to(device)


def _as_batch(prompts: list[list[int]], continuations: list[list[int]], eos: int, pad: int, device):
    examples = [{"input_ids": p + c + [eos], "loss_mask": [0] * len(p) + [1] * (len(c) + 1)}
                for p, c in zip(prompts, continuations, strict=True)]
    return {k: v.to(device) for k, v in collate(examples, pad).items()}


def _trim(tokens: torch.Tensor, eos: int) -> list[list[int]]:
    out = []
    for row in tokens.tolist():
        out.append(row[: row.index(eos)] if eos in row else row)
    return out


@torch.no_grad()
def student_batch(ctx, batch, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0):
    """The batch's prompts continued by the student's own samples (GKD's on-policy data)."""
    tok, model = ctx.tokenizer, ctx.student
    unwrapped = getattr(model, "module", model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    prompts = prompts_of(batch)
    ids, attn = _left_pad(prompts, pad, ctx.device)
    was_training = unwrapped.training
    unwrapped.eval()
    kwargs = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    out = unwrapped.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens, pad_token_id=pad,
                             eos_token_id=tok.eos_token_id, **kwargs)
    unwrapped.train(was_training)
    return _as_batch(prompts, _trim(out[:, ids.shape[1]:].cpu(), tok.eos_token_id), tok.eos_token_id, pad, ctx.device)


@torch.no_grad()
def mixture_batch(ctx, batch, max_new_tokens: int, alpha: float, generator: torch.Generator | None = None):
    """Continuations sampled token by token from alpha * p_teacher + (1 - alpha) * q_student
    (MiniLLM's teacher-mixed sampling), with both models' KV caches."""
    tok, student, teacher = ctx.tokenizer, getattr(ctx.student, "module", ctx.student), ctx.teacher
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = tok.eos_token_id
    prompts = prompts_of(batch)
    ids, attn = _left_pad(prompts, pad, ctx.device)
    was_training = student.training
    student.eval()
    pos = (attn.cumsum(-1) - 1).clamp_min(0)
    s_out = student(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
    t_out = teacher(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
    s_past, t_past = s_out.past_key_values, t_out.past_key_values
    s_logits, t_logits = s_out.logits[:, -1], t_out.logits[:, -1]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=ctx.device)
    sampled = []
    next_pos = pos[:, -1:]
    for _ in range(max_new_tokens):
        probs = alpha * torch.softmax(t_logits.float(), -1) + (1 - alpha) * torch.softmax(s_logits.float(), -1)
        nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(ctx.device)
        nxt = torch.where(done[:, None], torch.full_like(nxt, eos), nxt)
        sampled.append(nxt)
        done |= nxt[:, 0] == eos
        if bool(done.all()):
            break
        attn = torch.cat([attn, torch.ones_like(nxt)], dim=1)
        next_pos = next_pos + 1
        s_out = student(input_ids=nxt, attention_mask=attn, position_ids=next_pos, past_key_values=s_past,
                        use_cache=True)
        t_out = teacher(input_ids=nxt, attention_mask=attn, position_ids=next_pos, past_key_values=t_past,
                        use_cache=True)
        s_past, t_past = s_out.past_key_values, t_out.past_key_values
        s_logits, t_logits = s_out.logits[:, -1], t_out.logits[:, -1]
    student.train(was_training)
    tokens = torch.cat(sampled, dim=1).cpu() if sampled else torch.empty((len(prompts), 0), dtype=torch.long)
    return _as_batch(prompts, _trim(tokens, eos), eos, pad, ctx.device)
