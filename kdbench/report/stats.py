"""Intervals and paired tests for leaderboard scores: the statistics a reader needs to trust a comparison.

A row's score is the mean over its seeds of the mean over eval items. Its
uncertainty has two sources: which seeds were drawn and which items the task
happens to hold. Both are resampled, so an interval covers both:

    interval(scores [S, N]) -> (mean, low, high)
        95% percentile bootstrap: each replicate draws S seeds with replacement
        and N items with replacement (the same items for every seed: one item
        set per replicate), and averages. With one seed it is the item bootstrap.

    difference_interval([[(a, b), ...], ...]) -> (mean, low, high)
        the same for a change, mean(a) - mean(b) on shared items (a student after
        against before): items are drawn once for both rows (paired), seeds of
        each row on their own; averaged over parts and groups (see its doc).

Two rows (two algorithms, say) are compared on the same items and seeds:

    paired_test(a [S, N], b [S, N]) -> p-value, two-sided
        per item, the seed-averaged difference d_i = mean_s a[s, i] - mean_s b[s, i];
        a sign-flip permutation test on the d_i (each d_i's sign flipped at random
        under the null that the two rows are exchangeable on every item), exact
        below 17 differing items, else 20,000 random flips. It is a test over
        items; seeds enter through their average.

Random draws use a fixed seed, so a report is the same every time it is built.
"""

from __future__ import annotations

import itertools

import numpy as np

ALPHA = 0.05  # 95% intervals; "significant" means p < 0.05
BOOTSTRAP = 2000
PERMUTATIONS = 20_000
EXACT_MAX = 16  # up to this many differing items the test enumerates every sign pattern
SEED = 0
TOL = 1e-9  # seed-averaged differences this small are rounding (0.35 and 0.25 average to 0.3 +- 1 ulp), not evidence
_BLOCK = 2_000_000  # numbers per block of replicates or flips: memory stays bounded on large tasks


def method(n_boot: int = BOOTSTRAP, n_perm: int = PERMUTATIONS) -> str:
    """The method in words, for the report's definitions."""
    return (
        f"95% percentile bootstrap over seeds and items ({n_boot:,} replicates; each replicate draws the seeds "
        "and the items with replacement, the same items for every seed); comparisons use a paired sign-flip "
        "permutation test over items on the seed-averaged per-item differences (exact below "
        f"{EXACT_MAX + 1} differing items, else {n_perm:,} random flips), two-sided, significant at "
        f"p < {ALPHA:g}; random draws use a fixed seed ({SEED}), so the report is reproducible"
    )


def _matrix(x) -> np.ndarray:
    return np.atleast_2d(np.asarray(x, dtype=float))


def _counts(rng: np.random.Generator, reps: int, n: int) -> np.ndarray:
    """[reps, n]: how often each of n things is drawn in n draws with replacement, per replicate."""
    idx = rng.integers(0, n, size=(reps, n))
    return np.bincount((idx + n * np.arange(reps)[:, None]).ravel(), minlength=reps * n).reshape(reps, n)


def _seed_weights(rng: np.random.Generator, n_boot: int, s: int) -> np.ndarray:
    """[n_boot, s]: resampled seeds as weights summing to 1 per replicate."""
    return _counts(rng, n_boot, s) / s


def _item_means(rng: np.random.Generator, mats: list[np.ndarray], n_boot: int) -> list[np.ndarray]:
    """Per replicate, each seed row's mean over resampled items, one item draw shared by all of mats
    (all on the same N items): a [n_boot, S_k] array per matrix."""
    n = mats[0].shape[1]
    out = [np.empty((n_boot, m.shape[0])) for m in mats]
    block = max(1, _BLOCK // n)
    for start in range(0, n_boot, block):
        reps = min(block, n_boot - start)
        w = _counts(rng, reps, n) / n
        for o, m in zip(out, mats, strict=True):
            o[start : start + reps] = w @ m.T
    return out


def _quantiles(reps: np.ndarray) -> tuple[float, float]:
    low, high = np.quantile(reps, [ALPHA / 2, 1 - ALPHA / 2])
    return float(low), float(high)


def interval(scores, *, n_boot: int = BOOTSTRAP, seed: int = SEED) -> tuple[float, float, float]:
    """(mean, low, high) of the seed-and-item averaged score; scores [S, N] (seeds x items), 95% bootstrap.

    NaN bounds when there is nothing to resample (no items).
    """
    x = _matrix(scores)
    S, N = x.shape
    mean = float(x.mean()) if x.size else float("nan")
    if N == 0:
        return mean, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    seeds = _seed_weights(rng, n_boot, S)  # drawn first, then the items: one stream, reproducible
    (items,) = _item_means(rng, [x], n_boot)
    return (mean, *_quantiles((seeds * items).sum(1)))


def difference_interval(groups, *, n_boot: int = BOOTSTRAP, seed: int = SEED) -> tuple[float, float, float]:
    """(mean, low, high) of a change, 95% bootstrap.

    groups: [[(a, b), ...], ...]; in a part, a [S_a, N] and b [S_b, N] score the same N items (a student
    after and before on one task). The estimate is the mean over groups of the mean over their parts of
    mean(a) - mean(b). A group is one set of runs scored on several tasks: its a's share their seeds (the
    same S_a runs, rows in the same order), and so do its b's; each replicate draws those seeds once per
    group, and each part's items once for both of its rows (paired). Groups are resampled independently.
    NaN (all three) when a part has no items.
    """
    gs = [[(_matrix(a), _matrix(b)) for a, b in g] for g in groups if g]
    if not gs:
        return float("nan"), float("nan"), float("nan")
    if any(a.shape[1] == 0 or b.shape[1] == 0 for g in gs for a, b in g):
        return float("nan"), float("nan"), float("nan")
    mean = float(np.mean([np.mean([a.mean() - b.mean() for a, b in g]) for g in gs]))
    rng = np.random.default_rng(seed)
    reps = np.zeros(n_boot)
    for g in gs:
        seeds_a, seeds_b = {a.shape[0] for a, _ in g}, {b.shape[0] for _, b in g}
        if len(seeds_a) > 1 or len(seeds_b) > 1:
            raise ValueError(f"a group is one set of runs: seeds {sorted(seeds_a)} and {sorted(seeds_b)}")
        if any(a.shape[1] != b.shape[1] for a, b in g):
            raise ValueError("paired rows need the same items: " + str([(a.shape, b.shape) for a, b in g]))
        sa, sb = seeds_a.pop(), seeds_b.pop()
        wa, wb = _seed_weights(rng, n_boot, sa), _seed_weights(rng, n_boot, sb)
        part = np.zeros(n_boot)
        for a, b in g:
            ia, ib = _item_means(rng, [a, b], n_boot)
            part += (wa * ia).sum(1) - (wb * ib).sum(1)
        reps += part / len(g)
    return (mean, *_quantiles(reps / len(gs)))


def paired_test(a, b, *, n_perm: int = PERMUTATIONS, seed: int = SEED) -> float:
    """Two-sided p-value that rows a and b [S, N] (same seeds and items) score the same; see module doc."""
    x, y = _matrix(a), _matrix(b)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"paired rows need the same items: {x.shape[1]} != {y.shape[1]}")
    d = x.mean(0) - y.mean(0)
    d = d[np.abs(d) > TOL]  # items where the rows agree carry no evidence either way
    if d.size == 0:
        return 1.0
    observed = abs(d.sum()) - 1e-12
    if d.size <= EXACT_MAX:  # every sign pattern: an exact test (the observed one among them)
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        return float(np.mean(np.abs(signs @ d) >= observed))
    rng = np.random.default_rng(seed)
    hits, block = 0, max(1, _BLOCK // d.size)
    for start in range(0, n_perm, block):
        signs = rng.choice((1.0, -1.0), size=(min(block, n_perm - start), d.size))
        hits += int(np.sum(np.abs(signs @ d) >= observed))
    return float((hits + 1) / (n_perm + 1))  # never exactly 0


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
