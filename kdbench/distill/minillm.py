"""minillm: reverse KL optimised by policy gradient (Gu et al., 2023).

Minimising KL(q || p) over student sequences y ~ q has the gradient

    grad L = grad sum_t KL(q(.|y<t) || p(.|y<t))          single-step term, exact over the vocabulary
             - E[ sum_t R_{t+1} grad log q(y_t | y<t) ]     long-term term, R_{t+1} = sum_{t' > t} r_t'

with rewards r_t = log p(y_t|y<t) - log q(y_t|y<t). Following the paper:
sequences are sampled from the teacher-mixed distribution alpha p + (1 - alpha) q
and corrected with importance weights q / (alpha p + (1 - alpha) q), clipped to
[1 - eps, 1 + eps]; R_{t+1} is length-normalised (divided by the number of
remaining tokens); and a language-modelling loss on the teacher's text can be
mixed in (``ce_weight``, the paper's L_PT). Needs the teacher in memory.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from kdbench.distill.losses import DEFAULT_CHUNK, causal_lm_ce, rkl, shift
from kdbench.distill.onpolicy import mixture_batch
from kdbench.distill.trainer import StepContext


class MiniLLMConfig(BaseModel):
    """Defaults from the MiniLLM paper: teacher-mix alpha = 0.2, clip eps = 0.2, length normalisation on."""

    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(0.2, ge=0, le=1)
    clip_eps: float = Field(0.2, ge=0)
    length_norm: bool = True
    single_step: bool = True
    max_new_tokens: int = Field(48, ge=1)
    ce_weight: float = Field(0.5, ge=0)  # L_PT on the teacher's text
    chunk_size: int = Field(DEFAULT_CHUNK, ge=1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[tokens] without a [B,T,V] log-softmax: logits [B,T,V], tokens [B,T] -> [B,T]."""
    return logits.float().gather(-1, tokens[..., None])[..., 0] - torch.logsumexp(logits.float(), dim=-1)


def future_rewards(r: torch.Tensor, mask: torch.Tensor, normalise: bool) -> torch.Tensor:
    """R_{t+1} = sum of r over positions after t (masked), optionally divided by their count. [B,T] -> [B,T]."""
    r = r * mask
    after = torch.flip(torch.cumsum(torch.flip(r, [1]), 1), [1]) - r
    if not normalise:
        return after
    count = torch.flip(torch.cumsum(torch.flip(mask.float(), [1]), 1), [1]) - mask.float()
    return after / count.clamp_min(1.0)


def minillm_step(ctx: StepContext, batch):
    hp: MiniLLMConfig = ctx.hp
    sampled = mixture_batch(ctx, batch, hp.max_new_tokens, hp.alpha, generator=ctx.generator)
    s_logits = ctx.student(input_ids=sampled["input_ids"], attention_mask=sampled["attention_mask"]).logits
    with torch.no_grad():
        t_logits = ctx.teacher(input_ids=sampled["input_ids"], attention_mask=sampled["attention_mask"]).logits
    s, mask = shift(s_logits, sampled["loss_mask"])
    t = t_logits[:, :-1]
    tokens = sampled["input_ids"][:, 1:]
    lq = token_logprobs(s, tokens)  # with gradient
    with torch.no_grad():
        lp = token_logprobs(t, tokens)
        q, p = lq.detach().exp(), lp.exp()
        weight = (q / (hp.alpha * p + (1 - hp.alpha) * q)).clamp(1 - hp.clip_eps, 1 + hp.clip_eps)
        reward = lp - lq.detach()
        advantage = future_rewards(reward, mask, hp.length_norm)
    m = mask.float()
    long_term = -(weight * advantage * lq * m).sum() / m.sum().clamp_min(1.0)
    loss = long_term
    logs = {"long_term": float(long_term.detach()), "reward": float((reward * m).sum() / m.sum().clamp_min(1.0))}
    if hp.single_step:
        single = rkl(s, t, mask, chunk_size=hp.chunk_size)
        loss = loss + single
        logs["single_step_rkl"] = float(single.detach())
    if hp.ce_weight:
        logits = ctx.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ce = causal_lm_ce(logits, batch["input_ids"], batch["loss_mask"])
        loss = loss + hp.ce_weight * ce
        logs["pt_ce"] = float(ce.detach())
    return loss, logs
