"""Our divergences (kdbench.distill.losses) against TRL's ``generalized_jsd_loss``.

TRL (``trl.experimental.gkd.GKDTrainer.generalized_jsd_loss``, TRL 1.16) is an
independent, autograd-based implementation of the GKD divergence family:

    beta = 0      -> forward KL(p || q)        (F.kl_div(q_log, p_log))
    beta = 1      -> reverse KL(q || p)        (F.kl_div(p_log, q_log))
    0 < beta < 1  -> beta KL(p || M) + (1 - beta) KL(q || M),  M = beta p + (1 - beta) q

with p = softmax(teacher / tau) and q = softmax(student / tau), per vocabulary
entry, then summed over every kept entry. Its conventions differ from ours in
two places, converted explicitly below:

* Masking: TRL drops the positions whose ``labels`` are -100, and with
  ``reduction="batchmean"`` and labels given it divides the sum by
  ``(labels != -100).sum()``, the number of kept positions. That is exactly our
  normaliser (sum_t mask_t), so labels built from the mask give the same mean.
* Temperature: ours is multiplied by tau^2 (Hinton et al.'s gradient-scale
  correction); TRL's is not. So ours / tau^2 must equal TRL's, values and
  gradients alike.

Our losses compute the gradient in closed form, chunk by chunk, inside a custom
autograd Function; TRL's gradient comes from ordinary autograd. Agreeing on the
gradient w.r.t. the student logits is therefore a real check of the closed form.
"""

from __future__ import annotations

import pytest
import torch

from kdbench.distill.losses import fkl, jsd, rkl

trl_gkd = pytest.importorskip("trl.experimental.gkd")
generalized_jsd_loss = trl_gkd.GKDTrainer.generalized_jsd_loss

B, T, V = 3, 5, 17
RTOL = 1e-5

# Positions (batch row, time step) left out of the loss: scattered, plus a whole row's tail.
EXCLUDED = [(0, 0), (0, 3), (1, 4), (2, 2), (2, 3), (2, 4)]


def _inputs(seed: int = 0):
    """Student logits (leaf, requires grad), teacher logits, and a mask with EXCLUDED off."""
    g = torch.Generator().manual_seed(seed)
    student = (2.0 * torch.randn(B, T, V, generator=g, dtype=torch.float32)).requires_grad_(True)
    teacher = 2.0 * torch.randn(B, T, V, generator=g, dtype=torch.float32)
    mask = torch.ones(B, T, dtype=torch.bool)
    for b, t in EXCLUDED:
        mask[b, t] = False
    return student, teacher, mask


def _labels(mask: torch.Tensor) -> torch.Tensor:
    # TRL masks by labels == -100; any other label value keeps the position (its value is unused).
    return torch.where(mask, torch.zeros_like(mask, dtype=torch.long), torch.full_like(mask, -100, dtype=torch.long))


def _value_and_grad(loss: torch.Tensor, student: torch.Tensor):
    (grad,) = torch.autograd.grad(loss, student)
    return loss.detach(), grad


def _assert_close(ours: torch.Tensor, ref: torch.Tensor):
    # relative tolerance RTOL, with an absolute floor scaled to the tensor so that
    # entries that are ~0 by cancellation do not demand impossible relative accuracy
    atol = RTOL * float(ref.abs().max())
    torch.testing.assert_close(ours, ref, rtol=RTOL, atol=atol)


# (name, our loss, extra kwargs for ours, TRL's beta for the same divergence)
CASES = [
    ("fkl", fkl, {}, 0.0),
    ("rkl", rkl, {}, 1.0),
    ("jsd-0.1", jsd, {"beta": 0.1}, 0.1),
    ("jsd-0.5", jsd, {"beta": 0.5}, 0.5),
    ("jsd-0.9", jsd, {"beta": 0.9}, 0.9),
]


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize(("name", "ours_fn", "kwargs", "trl_beta"), CASES, ids=[c[0] for c in CASES])
def test_matches_trl_value_and_student_gradient(name, ours_fn, kwargs, trl_beta, temperature, chunk_size):
    student, teacher, mask = _inputs()

    ours, ours_grad = _value_and_grad(
        ours_fn(student, teacher, mask, temperature=temperature, chunk_size=chunk_size, **kwargs), student
    )
    ref, ref_grad = _value_and_grad(
        generalized_jsd_loss(
            student, teacher, labels=_labels(mask), beta=trl_beta, temperature=temperature, reduction="batchmean"
        ),
        student,
    )

    # TRL has no tau^2 factor: divide ours (value and gradient) by tau^2 before comparing.
    scale = temperature**2
    assert float(ref) > 1e-3, "random logits should give a clearly non-zero divergence"
    _assert_close(ours / scale, ref)
    _assert_close(ours_grad / scale, ref_grad)

    # Excluded positions get no gradient from either implementation.
    for b, t in EXCLUDED:
        assert torch.count_nonzero(ours_grad[b, t]) == 0
        assert torch.count_nonzero(ref_grad[b, t]) == 0


def test_batchmean_normaliser_is_kept_positions():
    """Guards the convention conversion above: TRL's batchmean with labels is sum / #kept positions,
    i.e. the mean of TRL's per-position sums over the kept positions, the same normaliser as ours."""
    student, teacher, mask = _inputs(seed=1)
    per_entry = generalized_jsd_loss(student, teacher, labels=None, beta=0.0, reduction="none")  # [B,T,V]
    per_position = per_entry.sum(-1)  # KL(p || q) at each position
    expected = per_position[mask].sum() / mask.sum()
    got = generalized_jsd_loss(student, teacher, labels=_labels(mask), beta=0.0, reduction="batchmean")
    _assert_close(got.detach(), expected.detach())
    assert int(mask.sum()) == B * T - len(EXCLUDED)


def test_identical_distributions_give_zero_for_both():
    student, _, mask = _inputs(seed=2)
    teacher = student.detach().clone()
    for ours_fn, kwargs, trl_beta in [(fkl, {}, 0.0), (rkl, {}, 1.0), (jsd, {"beta": 0.5}, 0.5)]:
        ours = ours_fn(student, teacher, mask, temperature=2.0, **kwargs).detach()
        ref = generalized_jsd_loss(student, teacher, labels=_labels(mask), beta=trl_beta, temperature=2.0).detach()
        assert abs(float(ours)) < 1e-6
        assert abs(float(ref)) < 1e-6


# ---- our own jsd endpoints, as TRL defines them ------------------------------------------
# The GKD formula beta KL(p||M) + (1-beta) KL(q||M) collapses to 0 at beta in {0, 1}; TRL
# (and GKD's authors) take the endpoints to be forward and reverse KL instead, and so must we.


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize(
    ("beta", "endpoint_fn", "trl_beta"), [(0.0, fkl, 0.0), (1.0, rkl, 1.0)], ids=["beta0-is-fkl", "beta1-is-rkl"]
)
def test_jsd_endpoints_are_forward_and_reverse_kl(beta, endpoint_fn, trl_beta, temperature):
    student, teacher, mask = _inputs(seed=3)
    got, got_grad = _value_and_grad(jsd(student, teacher, mask, temperature=temperature, beta=beta), student)
    want, want_grad = _value_and_grad(endpoint_fn(student, teacher, mask, temperature=temperature), student)
    ref, _ = _value_and_grad(
        generalized_jsd_loss(student, teacher, labels=_labels(mask), beta=trl_beta, temperature=temperature), student
    )

    assert float(want) > 1e-3  # a zero here would make the comparison vacuous
    _assert_close(got, want)
    _assert_close(got_grad, want_grad)
    _assert_close(got / temperature**2, ref)
