"""Per-item scores from the runs' samples.json: the evidence behind intervals and significance marks.

An evaluation run's samples.json (written by kdbench.evaluate) holds, per task, its items with ``id``,
``doc_id``, ``correct`` (multiple choice, and exact match for generation) and ``rougeL`` (generation).
For one (teacher, student) setting and one task, each leaderboard row (teacher, student before, each
algorithm) becomes a matrix [S, N]: its S runs (one per seed) by the N items that every row of the
setting has, aligned on item ids. A row with a run that has no samples of the task gets no matrix: no
interval, and no significance marks in that column.

``annotate`` adds to a pack's leaderboard, per task: ``<task>.low``/``.high`` (95% interval),
``<task>.best`` (marked best or tied best), ``<task>.gain`` with ``.gain_low``/``.gain_high`` (after -
before); per retention task ``retention.<task>.low``/``.high`` and ``.delta_low``/``.delta_high``, and
``retention.mean_delta_low``/``_high``. It returns the columns (matrices, marks) for the notes, the
summary and the win rates.
"""

# pandas types df[mask], df[col] and .loc[...] as Series | ndarray | scalar unions, so these rules
# report pandas idioms here, not bugs
# pyright: reportAttributeAccessIssue=false, reportArgumentType=false, reportCallIssue=false, reportGeneralTypeIssues=false

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kdbench import names
from kdbench.report import stats
from kdbench.report.leaderboard import TaskInfo

# the item field that scores each headline metric
FIELDS = {"acc": "correct", "exact_match": "correct", "rougeL": "rougeL"}

# why a column has no marks
MARKED = "best"  # one distilled student, significantly better than every other
TIED = "tied"  # several, none significantly below the leader
ALL_TIE = "all tie"  # no distilled student significantly below the leader: nothing marked
NO_SAMPLES = "no samples"  # a distilled student without per-item samples: no test, nothing marked
ALONE = "alone"  # fewer than two distilled students


def item_key(item: dict) -> str:
    return str(item["id"]) if item.get("id") not in (None, "") else f"doc {item.get('doc_id')}"


def run_items(sample: dict | None, task: str, metric: str) -> dict[str, float] | None:
    """{item id: score} of one run on one task, or None when it has no per-item scores of the metric."""
    fld = FIELDS.get(metric)
    if fld is None or not sample or not isinstance(sample.get(task), list):
        return None
    out = {}
    for it in sample[task]:
        v = it.get(fld)
        if v is not None and isinstance(v, (bool, int, float)) and math.isfinite(float(v)):
            out[item_key(it)] = float(v)
    return out or None


@dataclass
class Column:
    """One task in one setting: the rows' matrices on the items every row has, and what they say."""

    task: str
    metric: str
    rows: dict[str, np.ndarray] = field(default_factory=dict)  # row label -> [S, N]
    own: dict[str, int] = field(default_factory=dict)  # row label -> items all its runs have, before aligning
    without: list[str] = field(default_factory=list)  # rows with a run lacking samples of the task
    intervals: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    status: str = ALONE  # MARKED | TIED | ALL_TIE | NO_SAMPLES | ALONE
    best: list[str] = field(default_factory=list)  # marked rows, leader first
    leader: str = ""
    p: dict[str, float] = field(default_factory=dict)  # each distilled student against the leader

    @property
    def shared(self) -> int:
        return next(iter(self.rows.values())).shape[1] if self.rows else 0


def column(setting: pd.DataFrame, task: str, metric: str, samples: dict[str, dict]) -> Column:
    """The matrices of a setting's rows on one task (see the module doc)."""
    col = Column(task, metric)
    per_row: dict[str, list[dict[str, float]]] = {}
    for _, r in setting.iterrows():
        runs = [run_items(samples.get(rid), task, metric) for rid in r["run_ids"]]
        if runs and all(x is not None for x in runs):
            per_row[r["row"]] = [x for x in runs if x is not None]
        elif any(x is not None for x in runs) or _has_score(r, task):
            col.without.append(r["row"])
    own = {label: set.intersection(*(set(x) for x in runs)) for label, runs in per_row.items()}
    col.own = {label: len(ids) for label, ids in own.items()}
    shared = sorted(set.intersection(*own.values())) if own else []
    if shared:
        col.rows = {label: np.array([[x[k] for k in shared] for x in runs]) for label, runs in per_row.items()}
        col.intervals = {label: stats.interval(m) for label, m in col.rows.items()}
    return col


def _has_score(r: pd.Series, task: str) -> bool:
    for k in (f"{task}.mean", f"{names.RETENTION_PREFIX}{task}.mean"):
        if k in r and pd.notna(r[k]):
            return True
    return False


def mark(col: Column, students: list[str]) -> None:
    """Set the column's marks among the distilled students: the leader (highest mean on the shared items)
    alone when the paired test finds it significantly better than every other student; the leader and
    every student not significantly below it when some student is; nothing when all tie, when fewer
    than two compete, or when one of them has no per-item samples (no test is possible)."""
    if len(students) < 2:
        col.status = ALONE
        return
    if any(s not in col.rows for s in students):
        col.status = NO_SAMPLES
        return
    leaders, p = stats.best_of({s: col.rows[s] for s in students})
    col.leader, col.p = leaders[0], p
    if len(leaders) == len(students):
        col.status = ALL_TIE
        return
    col.best = leaders
    col.status = MARKED if len(leaders) == 1 else TIED


@dataclass
class Evidence:
    """A pack's columns per (teacher, student) setting: its tasks, and the retention tasks outside it."""

    scores: dict[tuple[str, str], dict[str, Column]] = field(default_factory=dict)
    retention: dict[tuple[str, str], dict[str, Column]] = field(default_factory=dict)

    def column(self, teacher: str, student: str, task: str) -> Column | None:
        return self.scores.get((teacher, student), {}).get(task)


def _labels(setting: pd.DataFrame, role: str) -> list[str]:
    return [str(x) for x in setting.loc[setting[names.ROLE] == role, "row"]]


def annotate(
    board: pd.DataFrame, tasks: list[TaskInfo], rtasks: list[TaskInfo], samples: dict[str, dict]
) -> tuple[pd.DataFrame, Evidence]:
    """The board with interval, mark and change columns (see the module doc), and its evidence."""
    ev = Evidence()
    if board.empty:
        return board, ev
    board = board.copy()
    nan = [math.nan] * len(board)
    for t in tasks:
        board[f"{t.name}.low"], board[f"{t.name}.high"] = nan, nan
        board[f"{t.name}.gain"], board[f"{t.name}.gain_low"], board[f"{t.name}.gain_high"] = nan, nan, nan
        board[f"{t.name}.best"] = False
    rp = names.RETENTION_PREFIX
    for t in rtasks:
        for k in ("low", "high", "delta_low", "delta_high"):
            board[f"{rp}{t.name}.{k}"] = nan
    if rtasks:
        board[f"{names.RETENTION_MEAN_DELTA}_low"], board[f"{names.RETENTION_MEAN_DELTA}_high"] = nan, nan
    for (teacher, student), setting in board.groupby([names.TEACHER, names.STUDENT], sort=False):
        key = (str(teacher), str(student))
        index = dict(zip(setting["row"], setting.index, strict=True))
        afters = _labels(setting, names.ROLE_AFTER)
        befores = _labels(setting, names.ROLE_BEFORE)
        before = befores[0] if befores else None
        ev.scores[key] = {}
        for t in tasks:
            col = column(setting, t.name, t.metric, samples)
            students = [a for a in afters if pd.notna(board.at[index[a], f"{t.name}.mean"])]
            mark(col, students)
            ev.scores[key][t.name] = col
            for label, (_, lo, hi) in col.intervals.items():
                board.at[index[label], f"{t.name}.low"], board.at[index[label], f"{t.name}.high"] = lo, hi
            for label in col.best:
                board.at[index[label], f"{t.name}.best"] = True
            if before is not None:
                b_mean = board.at[index[before], f"{t.name}.mean"]
                for a in afters:
                    board.at[index[a], f"{t.name}.gain"] = board.at[index[a], f"{t.name}.mean"] - b_mean
                    if a in col.rows and before in col.rows:
                        _, lo, hi = stats.difference_interval([[(col.rows[a], col.rows[before])]])
                        board.at[index[a], f"{t.name}.gain_low"], board.at[index[a], f"{t.name}.gain_high"] = lo, hi
        ev.retention[key] = {}
        for t in rtasks:
            col = column(setting, t.name, t.metric, samples)
            ev.retention[key][t.name] = col
            for label, (_, lo, hi) in col.intervals.items():
                board.at[index[label], f"{rp}{t.name}.low"], board.at[index[label], f"{rp}{t.name}.high"] = lo, hi
            for a in afters:
                if before is not None and a in col.rows and before in col.rows:
                    _, lo, hi = stats.difference_interval([[(col.rows[a], col.rows[before])]])
                    board.at[index[a], f"{rp}{t.name}.delta_low"] = lo
                    board.at[index[a], f"{rp}{t.name}.delta_high"] = hi
        for a in afters:
            group = change_group(ev.retention[key], a, before)
            if group:
                _, lo, hi = stats.difference_interval([group])
                board.at[index[a], f"{names.RETENTION_MEAN_DELTA}_low"] = lo
                board.at[index[a], f"{names.RETENTION_MEAN_DELTA}_high"] = hi
    return board, ev


def change_group(columns: dict[str, Column], after: str, before: str | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(after, before)] over every retention task of a setting, or [] when one of them lacks item data
    (then the mean change has no interval)."""
    if before is None or not columns:
        return []
    group = [(c.rows[after], c.rows[before]) for c in columns.values() if after in c.rows and before in c.rows]
    if len(group) < len(columns) or len({a.shape[0] for a, _ in group}) > 1:
        return []
    return group


def forgetting_summary(
    boards: dict[str, pd.DataFrame], evidence: dict[str, Evidence]
) -> dict[str, tuple[float, float, float]]:
    """Per algorithm, (mean, low, high) of its mean change over the retention tasks (retention.mean_delta,
    points of a ratio), averaged over the settings it was distilled in; the interval only when every one
    of those settings has per-item samples of every retention task. {} when no run has retention scores."""
    md = names.RETENTION_MEAN_DELTA
    per: dict[str, list[tuple[float, list]]] = {}
    for pack, board in boards.items():
        if board.empty or md not in board:
            continue
        ev = evidence.get(pack, Evidence())
        for (teacher, student), setting in board.groupby([names.TEACHER, names.STUDENT], sort=False):
            befores = _labels(setting, names.ROLE_BEFORE)
            cols = ev.retention.get((str(teacher), str(student)), {})
            for _, r in setting[setting[names.ROLE] == names.ROLE_AFTER].iterrows():
                if pd.notna(r[md]):
                    group = change_group(cols, str(r["row"]), befores[0] if befores else None)
                    per.setdefault(str(r["row"]), []).append((float(r[md]), group))
    out = {}
    for algo, vals in per.items():
        groups = [g for _, g in vals]
        lo, hi = stats.difference_interval(groups)[1:] if all(groups) else (math.nan, math.nan)
        out[algo] = (float(np.mean([m for m, _ in vals])), lo, hi)
    return out
