"""Sampling from a causal LM's own distribution, with no logits processors; token log-probs.

``model.generate`` fills every setting left unset from the model's
``generation_config`` (a hub model may ship top_k, a repetition penalty, min_p,
...) and then from transformers' global defaults (top_k = 50). Samples drawn
that way are not the model's distribution, which on-policy distillation (GKD,
MiniLLM) and self-knowledge rely on. This loop draws each token from
softmax(logits / temperature), optionally nucleus-filtered (top_p), or from a
mixture alpha * p_teacher + (1 - alpha) * q_model (MiniLLM's teacher-mixed
sampling); temperature 0 is greedy. Both models keep a KV cache; prompts are
left-padded with positions counted from each prompt's first token, as
``generate`` does.
"""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[tokens] in float32, without a [B,T,V] log-softmax. logits [B,T,V], tokens [B,T] -> [B,T]"""
    logits = logits.float()
    return logits.gather(-1, tokens[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)


def left_pad(prompts: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as left-padded ids [B,W] and attention mask [B,W]."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attn = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        attn[i, width - len(p) :] = 1
    return ids.to(device), attn.to(device)


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p, renormalised. [B,V] -> [B,V]"""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass of the tokens ranked above each one
    sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return kept / kept.sum(-1, keepdim=True)


def next_token_probs(
    logits: torch.Tensor,
    temperature: float,
    top_p: float = 1.0,
    teacher_logits: torch.Tensor | None = None,
    alpha: float = 0.0,
    vocab: int | None = None,
) -> torch.Tensor:
    """The distribution a token is drawn from, in float32. logits [B,V] -> probs [B,n].

    ``vocab`` (the tokenizer's length) restricts the draw to real tokens, leaving out the rows an
    embedding matrix is padded with; a teacher of the same vocabulary padded to another width is cut
    alike, so the mixture is over the rows both have. n = min(V, V_teacher, vocab).
    """
    n = min(logits.shape[-1], vocab or logits.shape[-1])
    if teacher_logits is not None and alpha > 0:
        n = min(n, teacher_logits.shape[-1])
        teacher_logits = teacher_logits[..., :n]
    logits = logits[..., :n]
    q = torch.softmax(logits.float() / temperature, dim=-1)
    if teacher_logits is not None and alpha > 0:
        q = alpha * torch.softmax(teacher_logits.float() / temperature, dim=-1) + (1 - alpha) * q
    return nucleus(q, top_p)


def _forward_params(model) -> set[str]:
    """The keyword names ``model.forward`` takes (read once per sample call, not per decoded token)."""
    import inspect

    return set(inspect.signature(model.forward).parameters)


def _with_cache(params: set[str], out) -> dict:
    """The KV cache of ``out`` as the keyword a forward with ``params`` takes (``cache`` in transformers >= 5.2x,
    ``past_key_values`` before and in remote-code models)."""
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = out.past_key_values
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def _last_logits_only(params: set[str]) -> dict:
    """``logits_to_keep=1`` where the forward takes it: only the last position's logits are needed, and
    the prompt pass would otherwise project every position ([B, T, V]: 1.5 GB for 64 prompts of 120 tokens at
    V = 49,152), as ``generate`` avoids too."""
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


@torch.no_grad()
def sample(
    model,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    eos: int | list[int],
    pad: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    teacher=None,
    alpha: float = 0.0,
    generator: torch.Generator | None = None,
    vocab: int | None = None,
) -> tuple[list[list[int]], list[bool]]:
    """Continue each prompt (token ids) until a stop token or ``max_new_tokens``.

    Returns (continuations without the stop token, whether each stopped on one).
    ``generator`` (a CPU generator) makes the draws reproducible; ``vocab`` keeps them among the
    first ``vocab`` ids (see next_token_probs).
    """
    if not prompts:
        return [], []
    stops = torch.tensor(sorted({eos} if isinstance(eos, int) else set(eos)))
    device = next(model.parameters()).device
    ids, attn = left_pad(prompts, pad, device)
    models = [model] + ([teacher] if teacher is not None and alpha > 0 else [])
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        pos = (attn.cumsum(-1) - 1).clamp_min(0)
        params = [_forward_params(m) for m in models]
        last = [_last_logits_only(p) for p in params]
        outs = [
            m(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, **k)
            for m, k in zip(models, last, strict=True)
        ]
        done = torch.zeros(len(prompts), dtype=torch.bool)
        stopped = torch.zeros(len(prompts), dtype=torch.bool)
        steps: list[torch.Tensor] = []
        next_pos = pos[:, -1:]
        for _ in range(max_new_tokens):
            logits = [o.logits[:, -1].cpu() for o in outs]
            if temperature <= 0:
                nxt = logits[0][..., :vocab].float().argmax(-1)  # [..., :None] is everything
            else:
                teacher_logits = logits[1] if len(logits) > 1 else None
                probs = next_token_probs(logits[0], temperature, top_p, teacher_logits, alpha, vocab)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            hit = ~done & torch.isin(nxt, stops)
            stopped |= hit
            done |= hit
            steps.append(nxt)
            if bool(done.all()):
                break
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            next_pos = next_pos + 1
            step_ids = nxt[:, None].to(device)
            outs = [
                m(
                    input_ids=step_ids,
                    attention_mask=attn,
                    position_ids=next_pos,
                    use_cache=True,
                    **k,
                    **_with_cache(p, o),
                )
                for m, o, k, p in zip(models, outs, last, params, strict=True)
            ]
    finally:
        for m, t in zip(models, was_training, strict=True):
            m.train(t)
    tokens = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in prompts]
    conts = []
    for row, s in zip(tokens, stopped.tolist(), strict=True):
        stop_at = next((j for j, t in enumerate(row) if t in stops.tolist()), None) if s else None
        conts.append(row[:stop_at] if stop_at is not None else row)
    return conts, stopped.tolist()
