"""The teacher-student gap (metric names come from kdbench.names)."""

from __future__ import annotations

import math

from kdbench import names


def gap_metrics(teacher: float, before: float, after: float) -> dict[str, float]:
    """gap = teacher - after; gap_closed = (after - before) / (teacher - before);
    retention = after / teacher. A ratio with a zero denominator is left out
    rather than reported as infinite."""
    out = {names.GAP: teacher - after}
    if not math.isclose(teacher, before, abs_tol=1e-12):
        out[names.GAP_CLOSED] = (after - before) / (teacher - before)
    if not math.isclose(teacher, 0.0, abs_tol=1e-12):
        out[names.RETENTION] = after / teacher
    return out


def chance_normalized(score: float, chance: float) -> float:
    """(score - chance) / (1 - chance): 0 at chance, 1 at perfect; below chance is negative."""
    return (score - chance) / (1.0 - chance) if chance < 1.0 else float("nan")


def flat_metrics(evals: dict[str, dict[str, float]]) -> dict[str, float]:
    """{task: {metric: v}} -> {'task.metric': v}."""
    return {names.metric(t, m): v for t, row in evals.items() for m, v in row.items() if isinstance(v, (int, float))}


def all_gaps(teacher: dict, before: dict, after: dict) -> dict[str, float]:
    """Gap metrics for every (task, metric) the three evaluations share (not stderr or n)."""
    out = {}
    for task, row in after.items():
        for m, v in row.items():
            if m.endswith("_stderr") or m == "n":
                continue
            if m in teacher.get(task, {}) and m in before.get(task, {}):
                for k, g in gap_metrics(teacher[task][m], before[task][m], v).items():
                    out[names.metric(task, m, k)] = g
    return out


def headline_metric(row: dict[str, float]) -> str | None:
    """The metric a task is summarised by: acc for multiple choice, else rougeL, exact_match or the first."""
    names_ = [m for m in row if not m.endswith("_stderr") and m != "n"]
    return next((m for m in ("acc", "rougeL", "exact_match") if m in names_), names_[0] if names_ else None)


def retention_metrics(
    after: dict[str, dict[str, float]], before: dict[str, dict[str, float]] | None = None
) -> dict[str, float]:
    """Scores on the retention tasks as retention.<task>.<metric> (and their n); with ``before``, the change
    retention.<task>.<metric>.delta = after - before per headline metric, and retention.mean_delta over the
    tasks (negative: the student forgot)."""
    out: dict[str, float] = {}
    deltas = []
    for task, row in after.items():
        for m, v in row.items():
            if not m.endswith("_stderr"):
                out[names.retention(task, m)] = v
        h = headline_metric(row)
        if before is not None and h is not None and h in before.get(task, {}):
            d = row[h] - before[task][h]
            out[names.retention(task, h, names.RETENTION_DELTA)] = d
            deltas.append(d)
    if deltas:
        out[names.RETENTION_MEAN_DELTA] = sum(deltas) / len(deltas)
    return out
