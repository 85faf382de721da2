"""minillm: reverse KL optimised by policy gradient (Gu et al., 2023).

Minimising the sequence-level KL(q || p) over student samples y has the gradient

    grad L = -E_y~q [ sum_t R_t grad log q(y_t | y<t) ],   R_t = sum_{t' >= t} r_t',
    r_t = log p(y_t | y<t) - log q(y_t | y<t).

The paper splits R_t = r_t + R_{t+1}: the r_t part is the gradient of the per-step
KL(q(.|y<t) || p(.|y<t)), computed exactly over the vocabulary (the *single-step*
term); the rest is a policy gradient. What each training step does, following
the paper and the authors' reference implementation (microsoft/LMOps ``minillm/``,
its GPT-2 scripts and ``arguments.py``):

1. Sample continuations of the batch's prompts from the teacher-mixed policy
   alpha p + (1 - alpha) q (alpha = 0.2), with no logits processor; keep the
   per-token importance weight w = q / (alpha p + (1 - alpha) q) (the paper's
   single-token approximation of the sequence weight).
2. Rewards r_t = clip((log p - log q) / reward_scaling, +-reward_clip) (0.5 and 100).
3. Advantages: the discounted return from t (gamma = 0.95) divided by the number
   of tokens it sums (length normalisation), whitened over the batch. As in the
   reference, the return *includes* r_t (``reward_from: current``); the paper's
   R_{t+1} is ``reward_from: next``.
4. PPO-clipped surrogate on rho = exp(log q - log q_old) * w: per token
   max(-A rho, -A clip(rho, 1 - eps, 1 + eps)) (eps = 0.2), so a token whose
   clipped value binds gives no gradient and a small w is never inflated.
   Each sampled batch is used for ``ppo_epochs`` (4) consecutive updates; rho
   moves away from w after the first.
5. Plus the single-step KL (unweighted, as the reference computes it).

The reference also mixes a language-modelling loss on *pretraining* data. That
is not the same thing as SeqKD on the teacher's answers, so it is off here:
``seqkd_weight`` > 0 adds cross-entropy on the batch's teacher responses,
named for what it is. Needs the teacher in memory.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from kdbench.distill.fused import (
    Head,
    cross_entropy_of,
    cut_vocab,
    divergence_of,
    output_of,
    shifted,
    token_logprobs_of,
    width,
)
from kdbench.distill.losses import DEFAULT_CHUNK
from kdbench.distill.onpolicy import mixture_batch
from kdbench.training import StepContext


class MiniLLMConfig(BaseModel):
    """Defaults: the paper and its reference code (train_*_xl.sh, arguments.py)."""

    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(0.2, ge=0, lt=1, description="teacher share of the sampling mixture (--teacher-mixed-alpha)")
    clip_eps: float | None = Field(
        0.2, gt=0, description="PPO clip range of rho = ratio * w (--cliprange); null turns clipping off"
    )
    gamma: float = Field(0.95, ge=0, le=1, description="discount of future rewards (--gamma)")
    reward_scaling: float = Field(0.5, gt=0, description="rewards are divided by this (--reward-scaling)")
    reward_clip: float | None = Field(100.0, gt=0, description="rewards clipped to +-this (--cliprange-reward)")
    length_norm: bool = Field(True, description="divide each return by the number of tokens it sums")
    whiten: bool = Field(True, description="whiten advantages over the batch's sampled tokens")
    reward_from: Literal["current", "next"] = Field(
        "current",
        description="return from the current token (reference code) or the next one (the paper's "
        "R_{t+1}, unbiased beside the single-step term)",
    )
    single_step: bool = Field(True, description="add the exact per-step KL(q || p) (--single-step-reg)")
    ppo_epochs: int = Field(4, ge=1, description="updates per sampled batch (--ppo-epochs)")
    max_new_tokens: int = Field(48, ge=1, description="tokens sampled per prompt")
    seqkd_weight: float = Field(
        0.0,
        ge=0,
        description="+ this x cross-entropy on the teacher's responses "
        "(SeqKD; not in MiniLLM, whose LM loss is on pretraining data)",
    )
    chunk_size: int | None = Field(
        DEFAULT_CHUNK, ge=1, description="positions per chunk of the unfused single-step KL; None: sized by bytes"
    )


def returns(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    *,
    length_norm: bool,
    start: Literal["current", "next"] = "current",
) -> torch.Tensor:
    """Discounted returns per token. rewards, mask [B,T] -> [B,T].

    current: G_t = sum_{t' >= t} gamma^(t'-t) r_t'; next: G_{t+1} (0 at the last token).
    length_norm divides by the number of masked tokens the return sums (at least 1).
    """
    m = mask.float()
    r = rewards.float() * m
    T = r.shape[1]
    g = torch.zeros_like(r)
    n = torch.zeros_like(r)
    run, cnt = torch.zeros_like(r[:, 0]), torch.zeros_like(r[:, 0])
    for t in reversed(range(T)):
        run = r[:, t] + gamma * run
        cnt = m[:, t] + cnt
        g[:, t], n[:, t] = run, cnt
    if start == "next":
        g = torch.cat([g[:, 1:], torch.zeros_like(g[:, :1])], dim=1)
        n = torch.cat([n[:, 1:], torch.zeros_like(n[:, :1])], dim=1)
    if length_norm:
        g = g / n.clamp_min(1.0)
    return g * m


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the masked entries (unbiased variance); 0 elsewhere. [B,T] -> [B,T]"""
    m = mask.bool()
    vals = x[m]
    if vals.numel() < 2:
        return torch.zeros_like(x)
    var, mean = torch.var_mean(vals)
    return ((x - mean) * torch.rsqrt(var + 1e-8)) * m


def rollout_stats(lq: torch.Tensor, lp: torch.Tensor, mask: torch.Tensor, hp: MiniLLMConfig):
    """Importance weights and advantages of a sampled batch (no gradient).

    lq, lp: log q and log p of the sampled tokens [B,T]; mask [B,T] marks sampled tokens.
    Returns (w, advantages), both [B,T].
    """
    with torch.no_grad():
        lq, lp = lq.detach().float(), lp.float()
        w = torch.exp(lq - torch.logaddexp(lp + _log(hp.alpha), lq + _log(1 - hp.alpha)))
        r = (lp - lq) / hp.reward_scaling
        if hp.reward_clip is not None:
            r = r.clamp(-hp.reward_clip, hp.reward_clip)
        adv = returns(r, mask, hp.gamma, length_norm=hp.length_norm, start=hp.reward_from)
        if hp.whiten:
            adv = whiten(adv, mask)
    return w, adv


def _log(x: float) -> float:
    return float(torch.log(torch.tensor(x, dtype=torch.float64))) if x > 0 else float("-inf")


def pg_loss(
    lq: torch.Tensor,
    old_lq: torch.Tensor,
    w: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-clipped policy-gradient loss and the fraction of tokens clipped. All inputs [B,T]; lq carries the
    gradient. rho = exp(lq - old_lq) * w; per token max(-A rho, -A clip(rho, 1 - eps, 1 + eps)); masked mean."""
    m = mask.float()
    rho = torch.exp(lq.float() - old_lq.float()) * w
    plain = -adv * rho
    if clip_eps is None:
        per_token, clipped = plain, torch.zeros_like(plain, dtype=torch.bool)
    else:
        bounded = -adv * rho.clamp(1 - clip_eps, 1 + clip_eps)
        per_token = torch.maximum(plain, bounded)
        clipped = bounded > plain
    n = m.sum().clamp_min(1.0)
    return (per_token * m).sum() / n, (clipped.float() * m).sum() / n


def minillm_step(ctx: StepContext, batch):
    hp: MiniLLMConfig = ctx.hp
    roll = ctx.extra.get("minillm_rollout")
    fresh = roll is None or roll["uses_left"] == 0
    if roll is None or fresh:
        roll = {"batch": mixture_batch(ctx, batch, hp.max_new_tokens, hp.alpha), "uses_left": hp.ppo_epochs}
    sampled = roll["batch"]
    ids, attn = sampled["input_ids"], sampled["attention_mask"]
    student, _ = output_of(ctx.student, ids, attn, fused=ctx.fused)
    assert ctx.teacher is not None, "minillm needs the teacher model (teacher_model=True in the registry)"
    with torch.no_grad():
        teacher, _ = output_of(ctx.teacher, ids, attn, fused=isinstance(student, Head))
    n = min(len(ctx.tokenizer), width(student), width(teacher))  # one vocabulary, maybe padded apart
    s_next, t_next = shifted(cut_vocab(student, n)), shifted(cut_vocab(teacher, n))
    tokens, mask = ids[:, 1:], sampled["action_mask"][:, 1:]
    lq = token_logprobs_of(s_next, tokens)
    if fresh:
        with torch.no_grad():
            lp = token_logprobs_of(t_next, tokens)
        roll["old_lq"] = lq.detach()
        roll["w"], roll["adv"] = rollout_stats(lq, lp, mask, hp)
        roll["reward"] = float(((lp - lq.detach()) * mask).sum() / mask.sum().clamp_min(1))
    roll["uses_left"] -= 1
    ctx.extra["minillm_rollout"] = roll
    loss, clip_frac = pg_loss(lq, roll["old_lq"], roll["w"], roll["adv"], mask, hp.clip_eps)
    m = mask.float()
    logs = {
        "pg_loss": float(loss.detach()),
        "clip_frac": float(clip_frac),
        "reward": roll["reward"],
        "w_mean": float((roll["w"] * m).sum() / m.sum().clamp_min(1)),
        "fresh_rollout": float(fresh),
    }
    if hp.single_step:
        single = divergence_of("rkl", s_next, t_next, mask, chunk_size=hp.chunk_size)
        loss = loss + single
        logs["single_step_rkl"] = float(single.detach())
    if hp.seqkd_weight:
        seqkd, _ = output_of(ctx.student, batch["input_ids"], batch["attention_mask"], fused=ctx.fused)
        ce = cross_entropy_of(seqkd, batch["input_ids"], batch["loss_mask"])
        loss = loss + hp.seqkd_weight * ce
        logs["seqkd_ce"] = float(ce.detach())
    return loss, logs
