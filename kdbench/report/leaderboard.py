"""Turn tracked runs into leaderboard tables (pandas), one per pack, and compare across packs.

A *setting* is (pack, teacher, student). Within it the leaderboard has the
teacher, the student before distillation, and one row per algorithm with every
number aggregated over seeds as mean, std and n. When a run was repeated (new
code, new config) only the newest run per (role, model, algorithm, seed) counts.

Scores on retention tasks outside the pack (``retention.<task>.<metric>``, logged
by student runs) become forgetting columns: ``retention.<task>.mean`` etc., the
change ``retention.<task>.delta`` and ``retention.mean_delta``.

Across packs, ``summary`` puts the headline score of each pack's first task side
by side and ``win_rates`` ranks algorithms HELM-style: in every (pack, task)
column an algorithm scores its share of contests with the other algorithms: a
significant win (paired test over items) counts 1, a tie 1/2, where per-item
samples exist; elsewhere a higher mean wins. Its mean win rate is the average
over the columns it appears in.
"""

# pandas types df[mask], df[col] and .loc[...] as Series | ndarray | scalar unions, so these rules
# report pandas idioms here, not bugs
# pyright: reportAttributeAccessIssue=false, reportArgumentType=false, reportGeneralTypeIssues=false, reportReturnType=false

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kdbench import names
from kdbench.metrics import chance_normalized, gap_metrics
from kdbench.packs import load_pack
from kdbench.report import stats

ROLE_ORDER = {names.ROLE_TEACHER: 0, names.ROLE_BEFORE: 1, names.ROLE_AFTER: 2}
EVAL_ROLES = list(ROLE_ORDER)
GAPS = (*names.GAPS, names.CHANCE_NORM)
COSTS = names.COSTS
_NOT_TASKS = (
    "m:train",
    "m:cost",
    "m:eval",
    "m:dataset",
    "m:decontam",
    "m:teacher",
    "m:dropped",
    "m:filter_rate",
    "m:" + names.RETENTION_PREFIX,
)
PREFERRED = ("acc", "rougeL", "exact_match", "f1")  # the headline metric of a task known by its metrics only


@dataclass
class TaskInfo:
    name: str
    metric: str  # the headline metric
    chance: float  # score of random guessing (1 / choices for multiple choice, else 0)
    kind: str = "generation"  # multiple_choice | generation
    inferred: bool = False  # from metric names: the pack is not present here
    total: int | None = None  # items the task holds (known when the pack is loadable here)


def _infer_tasks(df: pd.DataFrame, skip: set[str]) -> list[TaskInfo]:
    """Tasks from metric names '<task>.<metric>' (acc: multiple choice, chance assumed 1/4)."""
    names = sorted(
        {
            c[2:].split(".")[0]
            for c in df.columns
            if c.startswith("m:") and c.count(".") == 1 and not c.startswith(_NOT_TASKS)
        }
        - skip
    )
    out = []
    for n in names:
        metrics = [c[len(n) + 3 :] for c in df.columns if c.startswith(f"m:{n}.") and c.count(".") == 1]
        metrics = [m for m in metrics if not m.endswith("_stderr") and m != "n" and df[f"m:{n}.{m}"].notna().any()]
        for pick in (*PREFERRED, *sorted(metrics)):
            if pick in metrics:
                mc = pick.startswith("acc")
                out.append(TaskInfo(n, pick, 0.25 if mc else 0.0, "multiple_choice" if mc else "generation", True))
                break
    return out


def _load(pack_name: str, where: str | None):
    """The pack by name, or from ``where`` (a pack folder) when that holds the pack of that name."""
    for ref in [pack_name, where] if where and where != pack_name else [pack_name]:
        try:
            pack = load_pack(ref)
        except Exception:  # noqa: BLE001, S112  (not present here, or invalid: try the next, else infer)
            continue
        if pack.name == pack_name:
            return pack
    return None


def task_info(pack_name: str, df: pd.DataFrame, where: str | None = None) -> list[TaskInfo]:
    """The pack's tasks when it can be loaded here (by name, or from the folder ``where``), plus any
    other task with metrics (e.g. public ones); else inferred from metric names. Tasks without
    any score are left out."""
    d = df[df[names.ROLE].isin(EVAL_ROLES)] if names.ROLE in df else df
    d = d.dropna(axis=1, how="all")
    pack = _load(pack_name, where)
    if pack is None:
        return _infer_tasks(d, set())
    out = []
    for t in pack.spec.eval.tasks:
        if f"m:{t.name}.{t.metric}" not in d:
            continue
        items = pack.eval_items[t.name]
        chance = float(np.mean([1 / len(i.choices) for i in items])) if t.kind == "multiple_choice" else 0.0
        out.append(TaskInfo(t.name, t.metric, chance, t.kind, total=len(items)))
    return out + _infer_tasks(d, {t.name for t in pack.spec.eval.tasks})


def retention_tasks(df: pd.DataFrame) -> list[TaskInfo]:
    """The retention tasks outside the pack whose scores the runs logged (``retention.<task>.<metric>``),
    each with its headline metric; [] when no run has any."""
    prefix = "m:" + names.RETENTION_PREFIX
    metrics: dict[str, list[str]] = {}
    for c in df.columns:
        if not c.startswith(prefix) or not df[c].notna().any():
            continue
        parts = c[len(prefix) :].split(".")
        if len(parts) == 2 and parts[1] != "n" and not parts[1].endswith("_stderr"):
            metrics.setdefault(parts[0], []).append(parts[1])
    out = []
    for task in sorted(metrics):
        pick = next(m for m in (*PREFERRED, *sorted(metrics[task])) if m in metrics[task])
        mc = pick.startswith("acc")
        out.append(TaskInfo(task, pick, 0.25 if mc else 0.0, "multiple_choice" if mc else "generation", True))
    return out


def latest(df: pd.DataFrame) -> pd.DataFrame:
    keys = [k for k in [names.PACK, names.ROLE, names.TEACHER, names.STUDENT, names.ALGORITHM, names.SEED] if k in df]
    filled = df.assign(**{k: df[k].fillna("") for k in keys})
    return filled.sort_values("start_time").groupby(keys, dropna=False).tail(1)


def agg(values) -> tuple[float, float, int]:
    """(mean, sample std, n) of the finite values; std is 0 for one value, nan for none."""
    v = pd.to_numeric(pd.Series(values, dtype="object"), errors="coerce").astype(float)
    v = v[np.isfinite(v)]
    if v.empty:
        return (math.nan, math.nan, 0)
    return (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v))


def _col(runs: pd.DataFrame, name: str) -> pd.Series:
    return runs[name] if name in runs else pd.Series([math.nan] * len(runs), index=runs.index)


def leaderboard(
    df: pd.DataFrame, pack: str, tasks: list[TaskInfo], rtasks: list[TaskInfo] | None = None
) -> pd.DataFrame:
    """One row per model of each setting: scores (mean, std, n) per task, gap metrics, cost, and the
    scores on the retention tasks ``rtasks`` with their change (after - before)."""
    rtasks = rtasks or []
    d = latest(df[(df[names.PACK] == pack) & df[names.ROLE].isin(EVAL_ROLES)])
    teachers = d[d[names.ROLE] == names.ROLE_TEACHER]
    befores = d[d[names.ROLE] == names.ROLE_BEFORE]
    afters = d[d[names.ROLE] == names.ROLE_AFTER]
    rows = []
    for _, after_group in afters.groupby([names.TEACHER, names.STUDENT], dropna=False):
        t_ref, s_ref = after_group[names.TEACHER].iloc[0], after_group[names.STUDENT].iloc[0]
        t = teachers[teachers[names.TEACHER] == t_ref]
        b = befores[befores[names.STUDENT] == s_ref]
        setting = {names.PACK: pack, names.TEACHER: t_ref, names.STUDENT: s_ref}
        teacher_mean = {x.name: agg(_col(t, f"m:{x.name}.{x.metric}"))[0] for x in tasks}
        if not t.empty:
            rows.append(_row(setting, "teacher", names.ROLE_TEACHER, t, tasks, teacher_mean, rtasks))
        before = {} if b.empty else _row(setting, "student before", names.ROLE_BEFORE, b, tasks, teacher_mean, rtasks)
        if before:
            rows.append(before)
        for algo, runs in after_group.groupby("algorithm"):
            rows.append(
                _changes(_row(setting, str(algo), names.ROLE_AFTER, runs, tasks, teacher_mean, rtasks), before, rtasks)
            )
    if not rows and not teachers.empty:  # baselines only (no algorithm finished yet)
        for _, runs in teachers.groupby(names.TEACHER):
            rows.append(
                _row(
                    {names.PACK: pack, names.TEACHER: runs[names.TEACHER].iloc[0], names.STUDENT: ""},
                    "teacher",
                    names.ROLE_TEACHER,
                    runs,
                    tasks,
                    {},
                    rtasks,
                )
            )
    out = pd.DataFrame(rows)
    if not out.empty:
        out = out.sort_values([names.TEACHER, names.STUDENT, "order"], kind="stable").drop(columns="order")
    return out.reset_index(drop=True)


def _gaps(role: str, task: TaskInfo, runs: pd.DataFrame, teacher_mean: float) -> dict[str, pd.Series]:
    """Per-run gap, gap closed and retention. Student-after runs carry them as logged (against
    the baselines of their flow); the student before is measured against the teacher's mean."""
    base = f"m:{task.name}.{task.metric}"
    scores = _col(runs, base).astype(float)
    if role == names.ROLE_AFTER:
        return {g: _col(runs, f"{base}.{g}") for g in names.GAPS}
    if role == names.ROLE_TEACHER:
        return {names.GAP: scores * 0.0, names.GAP_CLOSED: scores * math.nan, names.RETENTION: scores / scores}
    per_run = [gap_metrics(teacher_mean, s, s) if np.isfinite(s) and np.isfinite(teacher_mean) else {} for s in scores]
    return {g: pd.Series([p.get(g, math.nan) for p in per_run], index=runs.index) for g in names.GAPS}


def _row(
    setting: dict,
    label: str,
    role: str,
    runs: pd.DataFrame,
    tasks: list[TaskInfo],
    teacher_mean: dict[str, float],
    rtasks: list[TaskInfo],
) -> dict:
    seeds = sorted(runs[names.SEED].dropna().astype(str)) if names.SEED in runs else []
    row = {
        **setting,
        "row": label,
        names.ROLE: role,
        "order": ROLE_ORDER[role],
        "seeds": len(runs),
        "seed_list": ",".join(s for s in seeds if s),
        "run_ids": list(runs["run_id"]),
    }
    for t in tasks:
        scores = _col(runs, f"m:{t.name}.{t.metric}")
        row[f"{t.name}.mean"], row[f"{t.name}.std"], row[f"{t.name}.n"] = agg(scores)
        row[f"{t.name}.items"] = agg(_col(runs, f"m:{t.name}.n"))[0]
        per_run = _gaps(role, t, runs, teacher_mean.get(t.name, math.nan))
        per_run[names.CHANCE_NORM] = pd.to_numeric(scores, errors="coerce").map(
            lambda s, c=t.chance: chance_normalized(s, c) if np.isfinite(s) else math.nan
        )
        for g in GAPS:
            row[f"{t.name}.{g}"], row[f"{t.name}.{g}_std"], _ = agg(per_run[g])
    for t in rtasks:
        base = names.retention(t.name, t.metric)
        k = names.RETENTION_PREFIX + t.name
        row[f"{k}.mean"], row[f"{k}.std"], row[f"{k}.n"] = agg(_col(runs, f"m:{base}"))
        row[f"{k}.items"] = agg(_col(runs, f"m:{names.retention(t.name, 'n')}"))[0]
        row[f"{k}.delta"], row[f"{k}.delta_std"], _ = agg(_col(runs, f"m:{base}.{names.RETENTION_DELTA}"))
    if rtasks:
        md = names.RETENTION_MEAN_DELTA
        row[md], row[f"{md}_std"], _ = agg(_col(runs, f"m:{md}"))
    for c in COSTS:
        row[c] = agg(_col(runs, f"m:{c}"))[0]
    if role != names.ROLE_AFTER:  # a baseline's only cost is its evaluation
        row[names.COST_EVAL_SECONDS] = agg(_col(runs, f"m:{names.EVAL_SECONDS}"))[0]
    return row


def _changes(row: dict, before: dict, rtasks: list[TaskInfo]) -> dict:
    """Retention changes the runs did not log, from the means: after - before per task, and their mean."""
    if not rtasks:
        return row
    deltas = []
    for t in rtasks:
        k = names.RETENTION_PREFIX + t.name
        if not np.isfinite(row[f"{k}.delta"]):
            row[f"{k}.delta"] = row[f"{k}.mean"] - before.get(f"{k}.mean", math.nan)
        deltas.append(row[f"{k}.delta"])
    md = names.RETENTION_MEAN_DELTA
    if not np.isfinite(row[md]) and all(np.isfinite(deltas)):
        row[md] = float(np.mean(deltas))
    return row


def teacher_ahead(board: pd.DataFrame, task: TaskInfo) -> bool:
    """Whether the teacher beats the student before on the task: gap closed means nothing otherwise."""
    t = board.loc[board[names.ROLE] == names.ROLE_TEACHER, f"{task.name}.mean"]
    b = board.loc[board[names.ROLE] == names.ROLE_BEFORE, f"{task.name}.mean"]
    return not t.empty and not b.empty and bool(t.iloc[0] > b.iloc[0])


def headline(tasks: list[TaskInfo]) -> TaskInfo | None:
    """The task whose headline metric summarises a pack: its first."""
    return tasks[0] if tasks else None


def _setting_label(pack: str, student: str, many: bool) -> str:
    return f"{pack} ({short_ref(student)})" if many else pack


def short_ref(ref: str) -> str:
    """A readable model reference: hub ids as they are, local paths by their last two parts."""
    if not ref:
        return ""
    p = Path(ref)
    return "/".join(p.parts[-2:]) if p.is_absolute() else ref


@dataclass
class SummaryColumn:
    """One column of the summary: a (pack, teacher, student) setting's headline task."""

    label: str
    pack: str
    teacher: str
    student: str
    task: TaskInfo
    rows: pd.DataFrame  # the setting's board rows, indexed by row label


def summary(boards: dict[str, pd.DataFrame], tasks: dict[str, list[TaskInfo]]) -> list[SummaryColumn]:
    """The headline score of each pack's first task, one column per (pack, teacher, student) setting;
    rows teacher, student before, each algorithm."""
    cols = []
    for pack, board in boards.items():
        h = headline(tasks[pack])
        if board.empty or h is None:
            continue
        for (teacher, student), setting in board.groupby([names.TEACHER, names.STUDENT], sort=False):
            label = f"{_label(board, pack, teacher, student)}: {h.name} {h.metric}"
            cols.append(SummaryColumn(label, pack, str(teacher), str(student), h, setting.set_index("row")))
    return cols


def _label(board: pd.DataFrame, pack: str, teacher, student) -> str:
    label = _setting_label(pack, student, board[names.STUDENT].nunique() > 1)
    if board[names.TEACHER].nunique() > 1:
        label += f" from {short_ref(teacher)}"
    return label


def win_columns(
    boards: dict[str, pd.DataFrame], tasks: dict[str, list[TaskInfo]], evidence: dict | None = None
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, np.ndarray]]]:
    """Over every (pack, teacher, student, task), the headline metric of each task: ({column: {algorithm:
    mean score}}, {column: {algorithm: per-item scores [S, N]}}); the second only for columns where every
    algorithm has per-item samples (evidence: {pack: items.Evidence})."""
    means: dict[str, dict[str, float]] = {}
    matrices: dict[str, dict[str, np.ndarray]] = {}
    for pack, board in boards.items():
        if board.empty:
            continue
        afters = board[board[names.ROLE] == names.ROLE_AFTER]
        for (teacher, student), setting in afters.groupby([names.TEACHER, names.STUDENT], sort=False):
            for t in tasks[pack]:
                vals = {
                    r["row"]: r[f"{t.name}.mean"] for _, r in setting.iterrows() if np.isfinite(r[f"{t.name}.mean"])
                }
                if not vals:
                    continue
                label = f"{_label(board, pack, teacher, student)}: {t.name} {t.metric}"
                means[label] = vals
                col = evidence[pack].column(str(teacher), str(student), t.name) if evidence else None
                if col is not None and all(a in col.rows for a in vals):
                    matrices[label] = {a: col.rows[a] for a in vals}
    return means, matrices


def win_rates(
    columns: dict[str, dict[str, float]], matrices: dict[str, dict[str, np.ndarray]] | None = None, tol: float = 1e-9
) -> pd.DataFrame:
    """HELM-style mean win rate per algorithm, best first. In each column with at least two
    algorithms, an algorithm's win rate is (wins + ties/2) / (others): with per-item scores
    (``matrices``) a win is significant by the paired test and a tie is no significant difference;
    without them a win is a higher mean and a tie equal means. columns: how many it was compared in."""
    rates: dict[str, list[float]] = {}
    for label, vals in columns.items():
        if len(vals) < 2:
            continue
        m = (matrices or {}).get(label)
        if m is not None and all(a in m for a in vals):
            for a, w in stats.win_rate({a: m[a] for a in vals}).items():
                rates.setdefault(a, []).append(w)
            continue
        for a, va in vals.items():
            others = [vb for b, vb in vals.items() if b != a]
            wins = sum(1.0 if va > vb + tol else 0.5 if abs(va - vb) <= tol else 0.0 for vb in others)
            rates.setdefault(a, []).append(wins / len(others))
    out = pd.DataFrame(
        [{"algorithm": a, "win_rate": float(np.mean(r)), "columns": len(r)} for a, r in rates.items()],
        columns=["algorithm", "win_rate", "columns"],
    )
    return out.sort_values(["win_rate", "algorithm"], ascending=[False, True], kind="stable").reset_index(drop=True)


def write_csv(board: pd.DataFrame, path: Path) -> Path:
    board.drop(columns=["run_ids"]).to_csv(path, index=False)
    return path
