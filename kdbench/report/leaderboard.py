"""Turn tracked runs into leaderboard tables (pandas), one per pack.

A *setting* is (pack, teacher, student). Within it the leaderboard has the
teacher, the student before distillation, and one row per algorithm with every
number aggregated over seeds as mean, std and n. When a run was repeated (new
code, new config) only the newest run per (role, model, algorithm, seed) counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kdbench.metrics import chance_normalized

ROLE_ORDER = {"teacher": 0, "student_before": 1, "student_after": 2}


@dataclass
class TaskInfo:
    name: str
    metric: str  # the headline metric
    chance: float  # score of random guessing (1 / choices for multiple choice, else 0)


def task_info(pack_name: str, df: pd.DataFrame) -> list[TaskInfo]:
    """From the pack when it can be loaded here, else inferred from metric names."""
    try:
        from kdbench.packs import load_pack

        pack = load_pack(pack_name)
        out = []
        for t in pack.spec.eval.tasks:
            items = pack.eval_items[t.name]
            chance = float(np.mean([1 / len(i.choices) for i in items])) if t.kind == "multiple_choice" else 0.0
            out.append(TaskInfo(t.name, t.metric, chance))
        return out
    except Exception:  # a pack not present on this machine: infer
        names = sorted({c[2:].split(".")[0] for c in df.columns if c.startswith("m:") and c.count(".") == 1
                        and not c.startswith(("m:train", "m:cost", "m:eval"))})
        out = []
        for n in names:
            metric = "acc" if f"m:{n}.acc" in df else ("rougeL" if f"m:{n}.rougeL" in df else None)
            if metric:
                out.append(TaskInfo(n, metric, 0.25 if metric == "acc" else 0.0))
        return out


def latest(df: pd.DataFrame) -> pd.DataFrame:
    keys = [k for k in ["pack", "role", "teacher", "student", "algorithm", "seed"] if k in df]
    filled = df.assign(**{k: df[k].fillna("") for k in keys})
    return filled.sort_values("start_time").groupby(keys, dropna=False).tail(1)


def _agg(values: pd.Series) -> tuple[float, float, int]:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return (math.nan, math.nan, 0)
    return (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, int(len(v)))


def leaderboard(df: pd.DataFrame, pack: str, tasks: list[TaskInfo]) -> pd.DataFrame:
    """One row per model of each setting: scores (mean, std, n) per task, gap metrics, cost."""
    d = latest(df[df["pack"] == pack])
    teachers = d[d["role"] == "teacher"]
    befores = d[d["role"] == "student_before"]
    afters = d[d["role"] == "student_after"]
    rows = []
    for _, after_group in afters.groupby(["teacher", "student"], dropna=False):
        t_ref, s_ref = after_group["teacher"].iloc[0], after_group["student"].iloc[0]
        t = teachers[teachers["teacher"] == t_ref]
        b = befores[befores["student"] == s_ref]
        setting = {"pack": pack, "teacher": t_ref, "student": s_ref}
        for label, runs, role in [("teacher", t, "teacher"), ("student before", b, "student_before")]:
            if not runs.empty:
                rows.append(_row(setting, label, role, runs, tasks))
        for algo, runs in after_group.groupby("algorithm"):
            rows.append(_row(setting, algo, "student_after", runs, tasks))
    if not rows and not teachers.empty:  # baselines only (no algorithm finished yet)
        for _, runs in teachers.groupby("teacher"):
            rows.append(_row({"pack": pack, "teacher": runs["teacher"].iloc[0], "student": ""}, "teacher",
                             "teacher", runs, tasks))
    out = pd.DataFrame(rows)
    if not out.empty:
        out = out.sort_values(["teacher", "student", "order"], kind="stable").drop(columns="order")
    return out.reset_index(drop=True)


def _row(setting: dict, label: str, role: str, runs: pd.DataFrame, tasks: list[TaskInfo]) -> dict:
    row = {**setting, "row": label, "role": role, "order": ROLE_ORDER[role], "seeds": len(runs),
           "run_ids": list(runs["run_id"])}
    for i, t in enumerate(tasks):
        col = f"m:{t.name}.{t.metric}"
        mean, std, n = _agg(runs[col]) if col in runs else (math.nan, math.nan, 0)
        row[f"{t.name}.mean"], row[f"{t.name}.std"], row[f"{t.name}.n"] = mean, std, n
        row[f"{t.name}.chance_norm"] = chance_normalized(mean, t.chance) if not math.isnan(mean) else math.nan
        for g in ("gap", "gap_closed", "retention"):
            gcol = f"m:{t.name}.{t.metric}.{g}"
            if role == "teacher":
                val = {"gap": 0.0, "gap_closed": math.nan, "retention": 1.0}[g]
            elif gcol in runs:
                val = _agg(runs[gcol])[0]
            else:
                val = math.nan
            row[f"{t.name}.{g}"] = val
    for c in ("cost.train_tokens", "cost.train_seconds", "cost.peak_mem_mb", "cost.tokens_per_s"):
        row[c] = _agg(runs[f"m:{c}"])[0] if f"m:{c}" in runs else math.nan
    return row


def write_csv(board: pd.DataFrame, path: Path) -> Path:
    board.drop(columns=["run_ids"]).to_csv(path, index=False)
    return path
