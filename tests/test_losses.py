"""Divergences against independent float64 formulas, gradients, properties, memory."""

import math

import pytest
import torch

from kdbench.distill import losses
from kdbench.distill.losses import DIVERGENCES, TopK

torch.manual_seed(0)


def reference(name, s, t, mask, tau=1.0, beta=0.5, alpha=0.1):
    """Each D_t in float64, written from its paper's definition (not from kdbench's code).

    p = softmax(teacher / tau), q = softmax(student / tau); loss = tau^2 * masked mean of D_t.
    """
    p = torch.softmax(t.double() / tau, -1)
    q = torch.softmax(s.double() / tau, -1)

    def kl(a, b):
        return (a * (a.log() - b.log())).sum(-1)

    d = {
        "fkl": lambda: kl(p, q),  # Hinton et al. 2015; Kim & Rush 2016 (word-level KD)
        "rkl": lambda: kl(q, p),  # MiniLLM (Gu et al. 2023), eq. 1 per token
        # GKD (Agarwal et al. 2024), eq. 1: JSD(beta) = beta KL(p || M) + (1 - beta) KL(q || M), M = beta p + (1-beta) q
        "jsd": lambda: beta * kl(p, beta * p + (1 - beta) * q) + (1 - beta) * kl(q, beta * p + (1 - beta) * q),
        "tvd": lambda: 0.5 * (p - q).abs().sum(-1),  # Wen et al. 2023 (f-divergence minimisation)
        # DistiLLM (Ko et al. 2024), eqs. 3 and 4: SKL = KL(p || a p + (1-a) q), SRKL = KL(q || (1-a) p + a q)
        "skl": lambda: kl(p, alpha * p + (1 - alpha) * q),
        "srkl": lambda: kl(q, (1 - alpha) * p + alpha * q),
    }[name]()
    m = mask.double()
    return tau**2 * (d * m).sum() / m.sum()


def inputs(B=3, T=7, V=13, dtype=torch.float32):
    s = (torch.randn(B, T, V) * 2).to(dtype).requires_grad_(True)
    t = (torch.randn(B, T, V) * 2).to(dtype)
    mask = torch.rand(B, T) > 0.3
    mask[0, 0] = True
    return s, t, mask


KNOBS = [
    ("fkl", {}),
    ("rkl", {}),
    ("tvd", {}),
    ("jsd", {"beta": 0.1}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 0.9}),
    ("skl", {"alpha": 0.1}),
    ("skl", {"alpha": 0.3}),
    ("srkl", {"alpha": 0.1}),
    ("srkl", {"alpha": 0.3}),
]


@pytest.mark.parametrize(("name", "knob"), KNOBS, ids=[f"{n}-{k}" for n, k in KNOBS])
@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("chunk", [1, 4, 128, None])
def test_value_and_gradient_match_reference(name, knob, tau, chunk):
    s, t, mask = inputs()
    got = DIVERGENCES[name](s, t, mask, temperature=tau, chunk_size=chunk, **knob)
    (g_got,) = torch.autograd.grad(got, s)
    s64 = s.detach().double().requires_grad_(True)
    want = reference(name, s64, t, mask, tau, **knob)
    (g_want,) = torch.autograd.grad(want, s64)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(g_got.double(), g_want, rtol=1e-4, atol=1e-6)


def test_srkl_mixture_leans_on_the_teacher():
    """DistiLLM's SRKL mixes (1 - alpha) teacher + alpha student. The reversed mixture (alpha p + (1 - alpha) q)
    stays close to q and caps the loss near -log(1 - alpha); the right one is far larger on distant p, q."""
    s, t, mask = inputs()
    got = losses.srkl(s, t, mask, alpha=0.1).item()
    p, q = torch.softmax(t.double(), -1), torch.softmax(s.detach().double(), -1)
    wrong = (q * (q.log() - (0.1 * p + 0.9 * q).log())).sum(-1)
    assert (wrong * mask).sum().item() / mask.sum().item() < -math.log(0.9) + 1e-9
    assert got > 5 * -math.log(0.9)


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


def test_jsd_symmetric_at_half_and_kl_at_the_ends():
    """beta = 0.5 is symmetric; at beta = 0 and 1 jsd is forward and reverse KL (TRL's generalized_jsd_loss and
    GKD's convention), never a loss of exactly zero."""
    s, t, mask = inputs()
    a = losses.jsd(s, t, mask, beta=0.5)
    b = losses.jsd(t.clone().requires_grad_(), s.detach(), mask, beta=0.5)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    assert losses.jsd(s, t, mask, beta=0.0).item() == pytest.approx(losses.fkl(s, t, mask).item(), rel=1e-6)
    assert losses.jsd(s, t, mask, beta=1.0).item() == pytest.approx(losses.rkl(s, t, mask).item(), rel=1e-6)
    assert losses.jsd(s, t, mask, beta=0.0).item() > 0.1


def test_jsd_scaled_limits_are_the_kls():
    """JSD_beta / beta -> KL(p||q) as beta -> 0, and / (1 - beta) -> KL(q||p) as beta -> 1."""
    s, t, mask = inputs(V=7)
    small = 1e-4
    assert losses.jsd(s, t, mask, beta=small).item() / small == pytest.approx(losses.fkl(s, t, mask).item(), rel=1e-2)
    assert losses.jsd(s, t, mask, beta=1 - small).item() / small == pytest.approx(
        losses.rkl(s, t, mask).item(), rel=1e-2
    )


def test_skew_limits():
    s, t, mask = inputs()
    assert losses.skl(s, t, mask, alpha=0.0).item() == pytest.approx(losses.fkl(s, t, mask).item(), rel=1e-5)
    assert losses.srkl(s, t, mask, alpha=0.0).item() == pytest.approx(losses.rkl(s, t, mask).item(), rel=1e-5)
    assert losses.skl(s, t, mask, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.srkl(s, t, mask, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)


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


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
def test_topk_with_all_tokens_equals_dense(tau):
    """The cache stores log-probs at tau = 1; at any tau, with k = V it must read what the dense teacher gives
    (before the fix, fkl at tau = 2 read 11.20 from the cache against 7.78 dense)."""
    s, t, mask = inputs(V=9)
    lp = torch.log_softmax(t, -1)
    vals, ids = lp.topk(9, dim=-1)
    for name in DIVERGENCES:
        dense = DIVERGENCES[name](s, t, mask, temperature=tau)
        sparse = DIVERGENCES[name](s, TopK(ids, vals), mask, temperature=tau)
        assert sparse.item() == pytest.approx(dense.item(), rel=1e-4, abs=1e-6), name
        (g_dense,) = torch.autograd.grad(dense, s)
        (g_sparse,) = torch.autograd.grad(sparse, s)
        torch.testing.assert_close(g_sparse, g_dense, rtol=1e-3, atol=1e-5)


def test_topk_tempering_spreads_the_tail_evenly():
    """k < V: listed tokens tempered exactly, the tail as if its mass were spread evenly over its V - k tokens."""
    t = torch.randn(1, 1, 30) * 2
    lp = torch.log_softmax(t, -1)[0, 0].double()
    vals, ids = lp.topk(6)
    tail, rest = 1 - vals.exp().sum(), 30 - 6
    head = (vals / 2.0).exp()
    z = head.sum() + rest * (tail / rest) ** 0.5
    got = losses.temper_topk(vals[None].float(), 30, 2.0)[0].double()
    torch.testing.assert_close(got, (head / z).log(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses.temper_topk(vals[None].float(), 30, 1.0), vals[None].float())


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
        assert torch.autograd.gradcheck(
            lambda x, fn=fn: fn(x, t, mask, chunk_size=2).double(), (s,), eps=1e-3, atol=1e-3, rtol=1e-2
        )


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


def test_chunks_are_sized_by_bytes_unless_given():
    from kdbench.distill.losses import CHUNK_BYTES, chunk_rows

    assert chunk_rows(32_000) == 8 and chunk_rows(2_048) == 128  # about 1 MiB of float32 per temporary
    assert chunk_rows(152_064) == 8  # at least MIN_CHUNK rows, however large the vocabulary
    assert chunk_rows(2_048) * 2_048 * 4 <= CHUNK_BYTES
    assert chunk_rows(32_000, 5) == 5
    s, t, mask = inputs()
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        DIVERGENCES["fkl"](s, t, mask, chunk_size=0)
