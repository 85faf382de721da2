"""MiniLLM's estimator, proved by exact enumeration on a toy policy.

Sequences over a 3-token vocabulary of one or two steps are enumerated, so the
expectation of the estimator's gradient over the sampling distribution is a sum,
not a Monte-Carlo guess. With the reference's variance reducers set to their
neutral values (gamma = 1, no length normalisation, no whitening, reward scale 1,
no reward clip) and clipping off, it must equal the exact gradient of the
sequence-level reverse KL (divided by T: the loss is a per-token mean). With
clipping on, it must equal the gradient of the clipped surrogate, written here
from PPO's case analysis rather than with max().
"""

import itertools

import pytest
import torch

from kdbench.distill.losses import rkl
from kdbench.distill.minillm import MiniLLMConfig, pg_loss, returns, rollout_stats, whiten
from kdbench.models.sampling import token_logprobs

V = 3
EXACT = {
    "gamma": 1.0,
    "reward_scaling": 1.0,
    "reward_clip": None,
    "length_norm": False,
    "whiten": False,
    "clip_eps": None,
}


def toy(T: int, seed: int):
    """Student parameters theta [T, V+1, V] (logits per step and previous token; index V = start) and a fixed
    teacher table of the same shape."""
    g = torch.Generator().manual_seed(seed)
    theta = (torch.randn(T, V + 1, V, generator=g, dtype=torch.float64) * 1.5).requires_grad_(True)
    teacher = torch.randn(T, V + 1, V, generator=g, dtype=torch.float64) * 1.5
    return theta, teacher


def logits_of(table: torch.Tensor, y: tuple[int, ...]) -> torch.Tensor:
    """[1, T, V]: the logits each step of y was drawn from."""
    prev = (V, *y[:-1])
    return torch.stack([table[t, prev[t]] for t in range(len(y))])[None]


def seq_logprob(table, y) -> torch.Tensor:
    return token_logprobs(logits_of(table, y), torch.tensor([y])).double().sum()


def exact_kl_grad(theta, teacher, T):
    kl = sum(
        seq_logprob(theta, y).exp() * (seq_logprob(theta, y) - seq_logprob(teacher, y))
        for y in itertools.product(range(V), repeat=T)
    )
    (g,) = torch.autograd.grad(kl, theta)
    return g


def mixture_prob(theta, teacher, y, alpha) -> float:
    s, t = logits_of(theta.detach(), y)[0], logits_of(teacher, y)[0]
    probs = alpha * torch.softmax(t, -1) + (1 - alpha) * torch.softmax(s, -1)
    return float(torch.prod(probs[torch.arange(len(y)), torch.tensor(y)]))


def estimator_loss(theta, teacher, y, hp: MiniLLMConfig) -> torch.Tensor:
    """One sampled sequence's loss exactly as minillm_step builds it (first use of the rollout)."""
    s, t = logits_of(theta, y), logits_of(teacher, y)
    tokens, mask = torch.tensor([y]), torch.ones(1, len(y), dtype=torch.bool)
    lq, lp = token_logprobs(s, tokens), token_logprobs(t, tokens)
    w, adv = rollout_stats(lq, lp, mask, hp)
    loss, _ = pg_loss(lq, lq.detach(), w, adv, mask, hp.clip_eps)
    if hp.single_step:
        loss = loss + rkl(s, t, mask)
    return loss.double()


def expected_grad(theta, teacher, T, hp):
    total = sum(
        mixture_prob(theta, teacher, y, hp.alpha) * estimator_loss(theta, teacher, y, hp)
        for y in itertools.product(range(V), repeat=T)
    )
    (g,) = torch.autograd.grad(total, theta)
    return g


@pytest.mark.parametrize(
    ("T", "alpha", "single_step", "reward_from"),
    [
        (1, 0.0, False, "current"),
        (2, 0.0, False, "current"),  # plain REINFORCE with reward-to-go
        (1, 0.0, True, "next"),
        (2, 0.0, True, "next"),  # the paper's split: single-step KL + R_{t+1}
        (1, 0.2, False, "current"),
        (1, 0.2, True, "next"),
        (1, 0.6, False, "current"),  # teacher-mixed + weights
    ],
)
def test_expected_gradient_is_the_exact_reverse_kl_gradient(T, alpha, single_step, reward_from):
    theta, teacher = toy(T, seed=T * 10 + int(alpha * 10))
    hp = MiniLLMConfig(alpha=alpha, single_step=single_step, reward_from=reward_from, **EXACT)
    want = exact_kl_grad(theta, teacher, T) / T
    got = expected_grad(theta, teacher, T, hp)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert want.abs().max() > 1e-2  # a real gradient, not two zeros


def test_reference_default_counts_the_current_reward_twice_beside_the_single_step_term():
    """reward_from=current with the single-step term on (the reference code's combination): the expected
    gradient is the exact one plus the single-step gradient again. Recorded so the choice stays visible."""
    T = 2
    theta, teacher = toy(T, seed=3)
    hp = MiniLLMConfig(alpha=0.0, single_step=True, reward_from="current", **EXACT)
    single_only = MiniLLMConfig(alpha=0.0, single_step=True, reward_from="next", **EXACT)
    got = expected_grad(theta, teacher, T, hp)
    exact = exact_kl_grad(theta, teacher, T) / T
    step_terms = sum(
        mixture_prob(theta, teacher, y, 0.0)
        * rkl(logits_of(theta, y), logits_of(teacher, y), torch.ones(1, T, dtype=torch.bool)).double()
        for y in itertools.product(range(V), repeat=T)
    )
    (g_single,) = torch.autograd.grad(step_terms, theta)
    torch.testing.assert_close(got, exact + g_single, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(expected_grad(theta, teacher, T, single_only), exact, rtol=1e-4, atol=1e-6)


def clipped_surrogate(lq, old, w, adv, eps):
    """PPO's clipped objective by cases: the ratio's gradient flows only inside the trust region on the side
    the advantage pushes towards; outside it the term is a constant."""
    rho = torch.exp(lq - old) * w
    inside = torch.where(adv >= 0, rho <= 1 + eps, rho >= 1 - eps)
    bound = torch.where(adv >= 0, torch.full_like(rho, 1 + eps), torch.full_like(rho, 1 - eps))
    return torch.where(inside, -adv * rho, -adv * bound.detach()).mean()


@pytest.mark.parametrize("alpha", [0.2, 0.6])
def test_clipped_estimator_is_the_clipped_objectives_gradient(alpha):
    T = 2
    theta, teacher = toy(T, seed=7)
    hp = MiniLLMConfig(alpha=alpha, single_step=False, **{**EXACT, "clip_eps": 0.2})
    got = expected_grad(theta, teacher, T, hp)
    total = 0.0
    for y in itertools.product(range(V), repeat=T):
        s, t = logits_of(theta, y), logits_of(teacher, y)
        tokens, mask = torch.tensor([y]), torch.ones(1, T, dtype=torch.bool)
        lq, lp = token_logprobs(s, tokens).double(), token_logprobs(t, tokens).double()
        w, adv = rollout_stats(lq, lp, mask, hp)
        total = total + mixture_prob(theta, teacher, y, alpha) * clipped_surrogate(
            lq, lq.detach(), w.double(), adv.double(), 0.2
        )
    (want,) = torch.autograd.grad(total, theta)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_clipping_stops_a_large_weight_and_never_inflates_a_small_one():
    lq = torch.zeros(1, 3, requires_grad=True)
    w = torch.tensor([[1.5, 0.3, 1.0]])
    adv = torch.tensor([[2.0, 2.0, -1.0]])
    loss, frac = pg_loss(lq, lq.detach(), w, adv, torch.ones(1, 3, dtype=torch.bool), 0.2)
    (g,) = torch.autograd.grad(loss, lq)
    # token 0: rho = 1.5 > 1.2 with A > 0 -> clipped, no gradient; token 1: rho = 0.3 kept as 0.3 (the old code
    # floored it at 0.8); token 2: inside the region, -A * rho' = 1 * 1.0
    torch.testing.assert_close(g, torch.tensor([[0.0, -2.0 * 0.3, 1.0]]) / 3)
    assert frac.item() == pytest.approx(1 / 3)


def test_ratio_moves_on_reuse():
    """On the second update of a rollout the ratio exp(log q - log q_old) is no longer 1."""
    old = torch.log(torch.tensor([[0.5, 0.2]]))
    lq = torch.log(torch.tensor([[0.7, 0.2]])).requires_grad_(True)
    loss, _ = pg_loss(lq, old, torch.ones(1, 2), torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool), None)
    assert loss.item() == pytest.approx(-(1.4 + 1.0) / 2)


def test_returns_by_hand():
    r = torch.tensor([[1.0, 2.0, 3.0, 5.0]])
    m = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)  # the last token is padding: its reward is ignored
    # G_t = r_t + 0.5 G_{t+1}: [1 + 0.5 * 3.5, 2 + 0.5 * 3, 3, 0]
    torch.testing.assert_close(returns(r, m, 0.5, length_norm=False), torch.tensor([[2.75, 3.5, 3.0, 0.0]]))
    # length norm divides by the tokens each return sums: 3, 2, 1
    torch.testing.assert_close(returns(r, m, 0.5, length_norm=True), torch.tensor([[2.75 / 3, 3.5 / 2, 3.0, 0.0]]))
    # from the next token (the paper's R_{t+1}), undiscounted: [2 + 3, 3, 0, 0]
    torch.testing.assert_close(returns(r, m, 1.0, length_norm=False, start="next"), torch.tensor([[5.0, 3, 0, 0]]))
    torch.testing.assert_close(returns(r, m, 1.0, length_norm=True, start="next"), torch.tensor([[2.5, 3, 0, 0]]))


def test_whiten_over_sampled_tokens_only():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    out = whiten(x, m)
    torch.testing.assert_close(out, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)


def test_rewards_are_scaled_and_clipped_and_weights_follow_the_mixture():
    lq = torch.log(torch.tensor([[0.5, 0.1]]))
    lp = torch.log(torch.tensor([[0.25, 0.9]]))
    m = torch.ones(1, 2, dtype=torch.bool)
    hp = MiniLLMConfig(alpha=0.2, gamma=1.0, reward_scaling=0.5, reward_clip=1.0, length_norm=False, whiten=False)
    w, adv = rollout_stats(lq, lp, m, hp)
    torch.testing.assert_close(w, torch.tensor([[0.5 / (0.2 * 0.25 + 0.8 * 0.5), 0.1 / (0.2 * 0.9 + 0.8 * 0.1)]]))
    r = torch.tensor(
        [[max(-1.0, 2 * float(torch.log(torch.tensor(0.5)))), min(1.0, 2 * float(torch.log(torch.tensor(9.0))))]]
    )
    torch.testing.assert_close(adv, torch.tensor([[r[0, 0] + r[0, 1], r[0, 1]]]))
