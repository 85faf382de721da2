"""The report's 95% intervals and paired tests on cases worked out by hand."""

import numpy as np
import pytest

from kdbench.report.stats import (
    best_of,
    difference_interval,
    interval,
    method,
    paired_test,
    significant,
    win_rate,
)


def test_interval_by_hand():
    # one seed, items [0, 1]: a replicate's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% quantiles are 0 and 1
    assert interval([[0.0, 1.0]]) == (0.5, 0.0, 1.0)
    # identical items and seeds: nothing varies
    assert interval([[0.7, 0.7, 0.7], [0.7, 0.7, 0.7]]) == pytest.approx((0.7, 0.7, 0.7))
    # two seeds that disagree completely ([1, 1] and [0, 0]): the seed draw alone moves the mean from 0 to 1
    assert interval([[1.0, 1.0], [0.0, 0.0]]) == (0.5, 0.0, 1.0)
    assert np.isnan(interval(np.zeros((2, 0)))[1])


def test_interval_shrinks_with_more_items_and_covers_the_mean():
    rng = np.random.default_rng(1)
    small = rng.random((3, 20)) < 0.6
    large = rng.random((3, 2000)) < 0.6
    m_s, lo_s, hi_s = interval(small.astype(float))
    m_l, lo_l, hi_l = interval(large.astype(float))
    assert lo_s <= m_s <= hi_s and lo_l <= m_l <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 4
    assert lo_l < 0.6 < hi_l


def test_paired_test_exact_by_hand():
    # d = [1, 1, 1]: of the 8 sign patterns only +++ and --- reach |sum| = 3: p = 2/8
    assert paired_test([[1, 1, 1]], [[0, 0, 0]]) == pytest.approx(0.25)
    # six items all won: 2 / 64
    assert paired_test([[1] * 6], [[0] * 6]) == pytest.approx(2 / 64)
    assert significant(paired_test([[1] * 6], [[0] * 6]))
    # d = [2, -1, 1] (seed-averaged): |sum| over the 8 patterns is 2,0,4,2,2,4,0,2: six reach 2
    a = [[2.0, 0.0, 1.0], [2.0, 0.0, 1.0]]
    b = [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]
    assert paired_test(a, b) == pytest.approx(6 / 8)
    # items the rows agree on carry no evidence: the same as without them
    assert paired_test([[1, 1, 1, 5, 5]], [[0, 0, 0, 5, 5]]) == pytest.approx(0.25)
    assert paired_test([[3, 3]], [[3, 3]]) == 1.0


def test_paired_test_uses_seed_averages_and_pairs_items():
    # per seed the rows trade places, but averaged over seeds a wins every item by 0.5
    a = np.array([[1.0] * 8, [0.0] * 8])
    b = np.array([[0.0] * 8, [0.0] * 8])
    assert paired_test(a, b) == pytest.approx(2 / 256)
    with pytest.raises(ValueError, match="same items"):
        paired_test(np.zeros((1, 3)), np.zeros((1, 4)))


def test_random_flips_for_many_items_are_close_to_the_exact_answer():
    rng = np.random.default_rng(2)
    a = (rng.random((2, 40)) < 0.7).astype(float)
    b = (rng.random((2, 40)) < 0.5).astype(float)
    p = paired_test(a, b)
    assert 0 < p < 1 and p == paired_test(a, b)  # reproducible: a fixed seed


def test_best_is_marked_only_when_significant_and_ties_count_half():
    strong = np.ones((3, 12))
    weak = np.zeros((3, 12))
    near = np.ones((3, 12))
    near[:, 0] = 0.0  # loses one item of twelve: not significantly worse than strong
    leaders, p = best_of({"sft": strong, "fkl": near, "rkl": weak})
    assert leaders == ["sft", "fkl"] and p["rkl"] < 0.05 and p["fkl"] >= 0.05
    leaders, _ = best_of({"sft": strong, "rkl": weak})
    assert leaders == ["sft"]
    rates = win_rate({"sft": strong, "fkl": near, "rkl": weak})
    # sft: tie with fkl (1/2) + win over rkl (1) over 2 contests; fkl the same; rkl lost both
    assert rates == pytest.approx({"sft": 0.75, "fkl": 0.75, "rkl": 0.0})
    assert np.isnan(win_rate({"sft": strong})["sft"])


def test_rounding_is_not_evidence():
    # 0.35 and 0.25 average to 0.3 up to one ulp: thirty such "differences" are no win (they were, p ~ 5e-5)
    a = np.array([[0.35] * 30, [0.25] * 30])
    b = np.full((2, 30), 0.3)
    assert paired_test(a, b) == 1.0
    assert win_rate({"a": a, "b": b}) == {"a": 0.5, "b": 0.5}


def test_difference_interval_by_hand():
    # always +1: nothing varies
    assert difference_interval([[([[1.0, 1.0]], [[0.0, 0.0]])]]) == (1.0, 1.0, 1.0)
    # one seed, items [1, 0] against [0, 0]: like interval([[1, 0]])
    assert difference_interval([[([[1.0, 0.0]], [[0.0, 0.0]])]]) == (0.5, 0.0, 1.0)
    # paired: the same items are drawn for both rows, so equal rows differ by exactly 0 in every replicate
    assert difference_interval([[([[1.0, 0.0, 1.0]], [[1.0, 0.0, 1.0]])]]) == (0.0, 0.0, 0.0)
    # a's two seeds disagree completely: the seed draw alone moves the change from 0 to 1
    assert difference_interval([[([[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0]])]]) == (0.5, 0.0, 1.0)
    # one group = one set of runs on two tasks: seed 0 scores 1 on task 1, seed 1 on task 2; drawn once for
    # both tasks, the mean over the tasks is (w0 + w1) / 2 = 1/2 in every replicate
    group = [([[1.0], [0.0]], [[0.0]]), ([[0.0], [1.0]], [[0.0]])]
    assert difference_interval([group]) == pytest.approx((0.5, 0.5, 0.5))
    # groups are averaged: +1 and 0
    assert difference_interval([[([[1.0]], [[0.0]])], [([[0.0]], [[0.0]])]]) == (0.5, 0.5, 0.5)
    assert np.isnan(difference_interval([])[0]) and np.isnan(difference_interval([[(np.zeros((1, 0)),) * 2]])[1])
    with pytest.raises(ValueError, match="same items"):
        difference_interval([[(np.zeros((1, 3)), np.zeros((1, 4)))]])


def test_large_tasks_stay_in_bounded_memory_and_agree_with_the_normal_approximation():
    # 8,000 items: replicates and flips go in blocks (not one 20,000 x 8,000 matrix of flips at once)
    rng = np.random.default_rng(3)
    a = (rng.random((1, 8000)) < 0.6).astype(float)
    m, lo, hi = interval(a)
    se = np.sqrt(m * (1 - m) / 8000)
    assert lo < m < hi and (hi - lo) / 2 == pytest.approx(1.96 * se, rel=0.1)
    b = a.copy()
    b[0, :40] = 1 - b[0, :40]  # a handful of flipped items among 8,000: no evidence of a difference
    assert paired_test(a, b) > 0.05 and paired_test(a, np.zeros_like(a)) < 1e-3


def test_method_states_the_numbers():
    text = method()
    for part in ["95% percentile bootstrap", "2,000 replicates", "exact below 17", "20,000", "p < 0.05", "fixed seed"]:
        assert part in text
