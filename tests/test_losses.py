"""Divergences against independent float64 formulas, gradients, properties, memory."""

import math

import pytest
import torch

from kdbench.distill import losses
from kdbench.distill.losses import DIVERGENCES, TopK

torch.manual_seed(0)


def reference(name, s, t, mask, tau=1.0, beta=0.5, alpha=0.1):
    """Straightforward float64 implementation of each D_t, straight from the definitions."""
    p = torch.softmax(t.double() / tau, -1)
    q = torch.softmax(s.double() / tau, -1)

    def kl(a, b):
        return (a * (a.log() - b.log())).sum(-1)

    d = {
        "fkl": lambda: kl(p, q),
        "rkl": lambda: kl(q, p),
        "jsd": lambda: beta * kl(p, beta * p + (1 - beta) * q) + (1 - beta) * kl(q, beta * p + (1 - beta) * q),
        "tvd": lambda: 0.5 * (p - q).abs().sum(-1),
        "skl": lambda: kl(p, alpha * p + (1 - alpha) * q),
        "srkl": lambda: kl(q, (1 - alpha) * q + alpha * p),
    }[name]()
    m = mask.double()
    return tau**2 * (d * m).sum() / m.sum()


def inputs(B=3, T=7, V=13, dtype=torch.float32):
    s = (torch.randn(B, T, V) * 2).to(dtype).requires_grad_(True)
    t = (torch.randn(B, T, V) * 2).to(dtype)
    mask = torch.rand(B, T) > 0.3
    mask[0, 0] = True
    return s, t, mask


@pytest.mark.parametrize("name", list(DIVERGENCES))
@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("chunk", [1, 4, 128])
def test_value_and_gradient_match_reference(name, tau, chunk):
    s, t, mask = inputs()
    got = DIVERGENCES[name](s, t, mask, temperature=tau, chunk_size=chunk)
    (g_got,) = torch.autograd.grad(got, s)
    s64 = s.detach().double().requires_grad_(True)
    want = reference(name, s64, t, mask, tau)
    (g_want,) = torch.autograd.grad(want, s64)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(g_got.double(), g_want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(DIVERGENCES))
def test_zero_for_identical_and_nonnegative(name):
    s, t, mask = inputs()
    same = DIVERGENCES[name](t.clone(), t, mask)
    assert abs(same.item()) < 1e-6
    for _ in range(5):
        s, t, mask = inputs()
        assert DIVERGENCES[name](s, t, mask).item() >= -1e-7


def test_true_kl_not_cross_entropy():
    """fkl must be KL (0 at p = q), not CE (which would equal the teacher's entropy)."""
    t = torch.randn(1, 4, 50)
    mask = torch.ones(1, 4, dtype=torch.bool)
    assert losses.fkl(t.clone().requires_grad_(), t, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_jsd_symmetric_at_half_and_continuous_at_ends():
    s, t, mask = inputs()
    a = losses.jsd(s, t, mask, beta=0.5)
    b = losses.jsd(t.clone().requires_grad_(), s.detach(), mask, beta=0.5)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    for end, near in [(0.0, 1e-7), (1.0, 1 - 1e-7)]:
        at = losses.jsd(s, t, mask, beta=end).item()
        close = losses.jsd(s, t, mask, beta=near).item()
        assert at == pytest.approx(0.0, abs=1e-6)
        assert close == pytest.approx(at, abs=1e-5)


def test_jsd_scaled_limits_are_the_kls():
    """JSD_beta / beta -> KL(p||q) as beta -> 0, and / (1 - beta) -> KL(q||p) as beta -> 1."""
    s, t, mask = inputs(V=7)
    small = 1e-4
    assert losses.jsd(s, t, mask, beta=small).item() / small == pytest.approx(losses.fkl(s, t, mask).item(), rel=1e-2)
    assert losses.jsd(s, t, mask, beta=1 - small).item() / small == pytest.approx(losses.rkl(s, t, mask).item(),
                                                                                 rel=1e-2)


def test_skew_limits():
    s, t, mask = inputs()
    assert losses.skl(s, t, mask, alpha=0.0).item() == pytest.approx(losses.fkl(s, t, mask).item(), rel=1e-5)
    assert losses.srkl(s, t, mask, alpha=1.0).item() == pytest.approx(losses.rkl(s, t, mask).item(), rel=1e-5)
    assert losses.skl(s, t, mask, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.srkl(s, t, mask, alpha=0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_temperature_scales_by_tau_squared_and_masks():
    s, t, mask = inputs()
    tau = 3.0
    got = losses.fkl(s, t, mask, temperature=tau).item()
    plain = losses.fkl(s / tau, t / tau, mask).item()
    assert got == pytest.approx(tau**2 * plain, rel=1e-5)
    # masked-out positions do not matter
    s2 = s.detach().clone()
    s2[~mask] = 1e3
    assert losses.fkl(s2, t, mask).item() == pytest.approx(losses.fkl(s, t, mask).item(), rel=1e-6)


def test_half_precision_inputs_computed_in_float32():
    s, t, mask = inputs(dtype=torch.bfloat16)
    got = losses.fkl(s, t, mask)
    want = reference("fkl", s.detach().float(), t.float(), mask)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-4)
    (g,) = torch.autograd.grad(got, s)
    assert g.dtype == torch.bfloat16


def test_empty_mask_gives_zero_with_gradient():
    s, t, _ = inputs()
    loss = losses.rkl(s, t, torch.zeros(3, 7, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(s.grad == 0)


def test_topk_with_all_tokens_equals_dense():
    s, t, mask = inputs(V=9)
    lp = torch.log_softmax(t, -1)
    vals, ids = lp.topk(9, dim=-1)
    for name in DIVERGENCES:
        dense = DIVERGENCES[name](s, t, mask).item()
        sparse = DIVERGENCES[name](s, TopK(ids, vals), mask).item()
        assert sparse == pytest.approx(dense, rel=1e-4, abs=1e-6), name


def test_topk_tail_bin_is_a_true_divergence():
    """With k < V the loss compares (k+1)-bin coarsenings: 0 iff they agree, >= 0 always."""
    s, t, mask = inputs(V=40)
    lp = torch.log_softmax(t, -1)
    vals, ids = lp.topk(5, dim=-1)
    for name in DIVERGENCES:
        assert DIVERGENCES[name](s, TopK(ids, vals), mask).item() >= 0
        assert abs(DIVERGENCES[name](t.clone(), TopK(ids, vals), mask).item()) < 1e-5
    # by hand for fkl: KL over the k listed tokens plus one tail bin
    ls = torch.log_softmax(s.detach().double(), -1)
    q_k, p_k = ls.gather(-1, ids).exp(), vals.double().exp()
    P = torch.cat([p_k, 1 - p_k.sum(-1, keepdim=True)], -1)
    Q = torch.cat([q_k, 1 - q_k.sum(-1, keepdim=True)], -1)
    d = (P * (P.log() - Q.log())).sum(-1)
    want = (d * mask).sum() / mask.sum()
    assert losses.fkl(s, TopK(ids, vals), mask).item() == pytest.approx(want.item(), rel=1e-4)


def test_gradcheck_float64():
    s = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 5, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    for name in ["fkl", "rkl", "jsd", "skl", "srkl"]:  # tvd is not differentiable where p = q
        fn = DIVERGENCES[name]
        # the loss computes in float32 by contract, so compare to a float32-tolerant check
        assert torch.autograd.gradcheck(lambda x: fn(x, t, mask, chunk_size=2).double(), (s,), eps=1e-3,
                                        atol=1e-3, rtol=1e-2)


def test_backward_scales_with_upstream_gradient():
    s, t, mask = inputs()
    (g1,) = torch.autograd.grad(losses.fkl(s, t, mask), s)
    (g3,) = torch.autograd.grad(3.0 * losses.fkl(s, t, mask), s)
    torch.testing.assert_close(g3, 3 * g1)


def test_rejects_bad_shapes_and_knobs():
    s, t, mask = inputs()
    with pytest.raises(ValueError, match="one vocabulary"):
        losses.fkl(s, t[..., :5], mask)
    with pytest.raises(ValueError, match="mask"):
        losses.fkl(s, t, mask[:, :3])
    with pytest.raises(ValueError, match="beta"):
        losses.jsd(s, t, mask, beta=1.5)
    with pytest.raises(ValueError, match="temperature"):
        losses.fkl(s, t, mask, temperature=0)


def test_causal_lm_ce_matches_manual():
    logits = torch.randn(2, 5, 11)
    ids = torch.randint(0, 11, (2, 5))
    lm = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.bool)
    got = losses.causal_lm_ce(logits, ids, lm)
    terms = [-torch.log_softmax(logits[b, t - 1], -1)[ids[b, t]] for b in range(2) for t in range(1, 5) if lm[b, t]]
    assert got.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    assert not math.isnan(losses.causal_lm_ce(logits, ids, torch.zeros_like(lm)).item())
