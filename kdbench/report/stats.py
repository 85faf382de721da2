"""Intervals and paired tests for leaderboard scores: the statistics a reader needs to trust a comparison.

A row's score is the mean over its seeds of the mean over eval items. Its
uncertainty has two sources: which seeds were drawn and which items the task
happens to hold. Both are resampled, so an interval covers both:

    interval(scores [S, N]) -> (mean, low, high)
        95% percentile bootstrap: each replicate draws S seeds with replacement
        and N items with replacement (the same items for every seed: one item
        set per replicate), and averages. With one seed it is the item bootstrap.

Two rows (two algorithms, say) are compared on the same items and seeds:

    paired_test(a [S, N], b [S, N]) -> p-value, two-sided
        per item, the seed-averaged difference d_i = mean_s a[s, i] - mean_s b[s, i];
        a sign-flip permutation test on the d_i (each d_i's sign flipped at random
        under the null that the two rows are exchangeable on every item), exact
        when 2^N is small, else 20,000 random flips. It is a test over items;
        seeds enter through their average.

Random draws use a fixed seed, so a report is the same every time it is built.
"""

from __future__ import annotations

import itertools

import numpy as np

ALPHA = 0.05  # 95% intervals; "significant" means p < 0.05
BOOTSTRAP = 2000
PERMUTATIONS = 20_000
SEED = 0


def interval(scores, *, n_boot: int = BOOTSTRAP, seed: int = SEED) -> tuple[float, float, float]:
    """(mean, low, high) of the seed-and-item averaged score; scores [S, N] (seeds x items), 95% bootstrap.

    NaN bounds when there is nothing to resample (no items).
    """
    x = np.asarray(scores, dtype=float)
    if x.ndim == 1:
        x = x[None, :]
    S, N = x.shape
    mean = float(x.mean()) if x.size else float("nan")
    if N == 0:
        return mean, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, S, size=(n_boot, S))
    items = rng.integers(0, N, size=(n_boot, N))
    reps = np.empty(n_boot)
    for b in range(n_boot):
        reps[b] = x[np.ix_(seeds[b], items[b])].mean()
    low, high = np.quantile(reps, [ALPHA / 2, 1 - ALPHA / 2])
    return mean, float(low), float(high)


def paired_test(a, b, *, n_perm: int = PERMUTATIONS, seed: int = SEED) -> float:
    """Two-sided p-value that rows a and b [S, N] (same seeds and items) score the same; see module doc."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.ndim == 1:
        x, y = x[None, :], y[None, :]
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"paired rows need the same items: {x.shape[1]} != {y.shape[1]}")
    d = x.mean(0) - y.mean(0)
    d = d[d != 0]  # items where the rows agree carry no evidence either way
    if d.size == 0:
        return 1.0
    observed = abs(d.sum()) - 1e-12
    if d.size <= 16:  # every sign pattern: an exact test (the observed one among them)
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        return float(np.mean(np.abs(signs @ d) >= observed))
    signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(n_perm, d.size))
    return float((np.sum(np.abs(signs @ d) >= observed) + 1) / (n_perm + 1))  # never exactly 0


def significant(p: float) -> bool:
    return bool(p < ALPHA)


def best_of(rows: dict[str, np.ndarray], *, higher_is_better: bool = True) -> tuple[list[str], dict[str, float]]:
    """The best row(s) of a column and the p-values against the leader.

    rows: name -> scores [S, N] on the same items. Returns (leaders, p) where leaders is the leading row
    and every row not significantly different from it (a tie lists them all), and p[name] is the paired
    test's p-value of that row against the leader.
    """
    if not rows:
        return [], {}
    sign = 1.0 if higher_is_better else -1.0
    leader = max(rows, key=lambda k: sign * float(np.mean(rows[k])))
    p = {k: (1.0 if k == leader else paired_test(rows[leader], v)) for k, v in rows.items()}
    tied = [k for k in rows if k == leader or not significant(p[k])]
    return sorted(tied, key=lambda k: -sign * float(np.mean(rows[k]))), p


def win_rate(rows: dict[str, np.ndarray], *, higher_is_better: bool = True) -> dict[str, float]:
    """Each row's share of pairwise contests won in one column: a significant win counts 1, a tie (no
    significant difference) 1/2, a significant loss 0. One row alone: no contest (NaN)."""
    names = list(rows)
    if len(names) < 2:
        return {n: float("nan") for n in names}
    sign = 1.0 if higher_is_better else -1.0
    score = dict.fromkeys(names, 0.0)
    for x, y in itertools.combinations(names, 2):
        p = paired_test(rows[x], rows[y])
        if not significant(p):
            score[x] += 0.5
            score[y] += 0.5
        elif sign * (np.mean(rows[x]) - np.mean(rows[y])) > 0:
            score[x] += 1.0
        else:
            score[y] += 1.0
    return {n: s / (len(names) - 1) for n, s in score.items()}
