"""The report's figures (matplotlib, Agg backend): PNG files next to the report.

Each algorithm keeps one colour and one marker in every figure, so a reader can
follow it from pack to pack.
"""

# pandas types df[mask], df[col] and .loc[...] as Series | ndarray | scalar unions, so these rules
# report pandas idioms here, not bugs
# pyright: reportAttributeAccessIssue=false, reportArgumentType=false, reportGeneralTypeIssues=false

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kdbench import names
from kdbench.report.leaderboard import TaskInfo, headline, teacher_ahead

MARKERS = "osD^vP*Xhp<>"
DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
        }
    )
    return plt


def styles(algorithms: list[str]) -> dict[str, tuple[str, str]]:
    """algorithm -> (colour, marker), stable for a sorted list of algorithms."""
    import matplotlib.colors

    cmap = matplotlib.colormaps["tab10"]
    return {
        a: (matplotlib.colors.to_hex(cmap(i % 10)), MARKERS[i % len(MARKERS)]) for i, a in enumerate(sorted(algorithms))
    }


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def gap_closed_bars(
    boards: dict[str, pd.DataFrame], tasks: dict[str, list[TaskInfo]], style: dict[str, tuple[str, str]], path: Path
) -> Path | None:
    """Grouped bars: per pack, the gap closed on its headline task by each algorithm (mean ± std)."""
    groups = []  # (x label, {algorithm: (mean, std)})
    for pack, board in boards.items():
        h = headline(tasks[pack])
        if h is None or board.empty:
            continue
        afters = board[board[names.ROLE] == names.ROLE_AFTER]
        many = afters[names.STUDENT].nunique() > 1
        for student, rows in afters.groupby(names.STUDENT, sort=False):
            col = names.metric(h.name, names.GAP_CLOSED)
            vals = {r["row"]: (r[col], r[f"{col}_std"]) for _, r in rows.iterrows() if np.isfinite(r[col])}
            if vals:
                label = f"{pack}\n{h.name} {h.metric}" + (f"\n{Path(student).name}" if many else "")
                if not teacher_ahead(board[board[names.STUDENT] == student], h):
                    label += "\n(teacher ≤ before:\nnot meaningful)"
                groups.append((label, vals))
    if not groups:
        return None
    algos = sorted({a for _, v in groups for a in v})
    plt = _plt()
    width = 0.8 / len(algos)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 + len(groups) * (0.5 + 0.45 * len(algos))), 4.2))
    for i, a in enumerate(algos):
        xs = [g + (i - (len(algos) - 1) / 2) * width for g, (_, v) in enumerate(groups) if a in v]
        ms = [100 * v[a][0] for _, v in groups if a in v]
        es = [100 * (v[a][1] if np.isfinite(v[a][1]) else 0.0) for _, v in groups if a in v]
        bars = ax.bar(
            xs,
            ms,
            width * 0.92,
            yerr=es,
            capsize=3,
            color=style[a][0],
            label=a,
            error_kw={"elinewidth": 1, "alpha": 0.7},
        )
        ax.bar_label(bars, labels=[f"{m:.0f}" for m in ms], padding=2, fontsize=8)
    ax.axhline(0, color="#444", lw=0.8)
    ax.axhline(100, color="#444", lw=0.8, ls="--")
    ax.text(-0.55, 100, "teacher", va="bottom", ha="left", fontsize=8, color="#444")
    ax.set_xticks(range(len(groups)), [g for g, _ in groups])
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylabel("gap closed (%)")
    ax.set_title("Gap closed by distillation (headline task; mean ± std over seeds)")
    ax.legend(title="algorithm", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)


COST_AXES = [(names.COST_TRAIN_TOKENS, "training tokens"), (names.COST_TRAIN_SECONDS, "training wall time (s)")]


def score_vs_cost(
    board: pd.DataFrame, tasks: list[TaskInfo], pack: str, style: dict[str, tuple[str, str]], path: Path
) -> Path | None:
    """Headline score against training tokens and against wall time, one marker per algorithm;
    the teacher and the student before as horizontal lines."""
    h = headline(tasks)
    if h is None or board.empty:
        return None
    afters = board[board[names.ROLE] == names.ROLE_AFTER]
    axes_used = [(c, label) for c, label in COST_AXES if afters[c].notna().any()]
    if afters.empty or not axes_used:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(axes_used), figsize=(5.2 * len(axes_used), 3.8), squeeze=False, sharey=True)
    many = afters[names.STUDENT].nunique() > 1
    for ax, (col, label) in zip(axes[0], axes_used, strict=False):
        for _, r in afters.iterrows():
            y, yerr = 100 * r[f"{h.name}.mean"], 100 * r[f"{h.name}.std"]
            if not (np.isfinite(y) and np.isfinite(r[col])):
                continue
            colour, marker = style[r["row"]]
            name = r["row"] + (f" ({Path(r['student']).name})" if many else "")
            # hollow markers: algorithms with the same cost and score stay visible on top of each other
            ax.errorbar(
                r[col],
                y,
                yerr=yerr if np.isfinite(yerr) else None,
                fmt=marker,
                color=colour,
                ms=9,
                mfc="none",
                mew=2,
                capsize=3,
                label=name,
            )
        for role, ls, text in [(names.ROLE_TEACHER, "--", "teacher"), (names.ROLE_BEFORE, ":", "student before")]:
            base = board[board[names.ROLE] == role]
            if not base.empty and np.isfinite(base[f"{h.name}.mean"].iloc[0]):
                ax.axhline(100 * base[f"{h.name}.mean"].iloc[0], color="#555", ls=ls, lw=1, label=text)
        ax.set_xlabel(label)
        ax.xaxis.set_major_formatter(_human)
        _pad(ax, afters[col])
    axes[0][0].set_ylabel(f"{h.name} {h.metric} (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=False))
    fig.legend(
        seen.values(),
        seen.keys(),
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncols=min(len(seen), 6),
        frameon=False,
    )
    fig.suptitle(f"{pack}: score against cost (mean ± std over seeds)")
    fig.tight_layout()
    return _save(fig, path)


def _err(x: float, low: float, high: float) -> list[list[float]] | None:
    """Asymmetric error bar from a 95% interval (in points), or None without one."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return None
    return [[max(0.0, x - 100 * low)], [max(0.0, 100 * high - x)]]


def gain_vs_forgetting(
    board: pd.DataFrame, tasks: list[TaskInfo], pack: str, style: dict[str, tuple[str, str]], path: Path
) -> Path | None:
    """Domain gain on the headline task (student after - before, points) against the change on the
    retention tasks outside the pack (mean over them, points; negative: forgot), one marker per
    algorithm; error bars are 95% intervals where the runs have per-item samples. None when no run
    has retention scores."""
    h = headline(tasks)
    md = names.RETENTION_MEAN_DELTA
    if h is None or board.empty or md not in board or f"{h.name}.gain" not in board:
        return None
    afters = board[board[names.ROLE] == names.ROLE_AFTER]
    afters = afters[np.isfinite(afters[md].astype(float)) & np.isfinite(afters[f"{h.name}.gain"].astype(float))]
    if afters.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    many = afters[names.STUDENT].nunique() > 1
    ax.axhline(0, color="#444", lw=0.8)
    ax.axvline(0, color="#444", lw=0.8)
    for _, r in afters.iterrows():
        x, y = 100 * r[md], 100 * r[f"{h.name}.gain"]
        colour, marker = style[r["row"]]
        ax.errorbar(
            x,
            y,
            xerr=_err(x, r.get(f"{md}_low", np.nan), r.get(f"{md}_high", np.nan)),
            yerr=_err(y, r.get(f"{h.name}.gain_low", np.nan), r.get(f"{h.name}.gain_high", np.nan)),
            fmt=marker,
            color=colour,
            ms=9,
            mfc="none",
            mew=2,
            capsize=3,
            label=r["row"] + (f" ({Path(r['student']).name})" if many else ""),
        )
    ax.set_xlabel("change on retention tasks (pts, mean over them; < 0: forgot)")
    ax.set_ylabel(f"domain gain: {h.name} {h.metric}, after − before (pts)")
    ax.set_title(f"{pack}: domain gain against forgetting (95% intervals)")
    ends = [100 * afters[c].to_numpy(dtype=float) for c in (md, f"{md}_low", f"{md}_high") if c in afters]
    _pad(ax, pd.Series(np.concatenate([*ends, [0.0]])))  # the bars and 0 (no change) in view
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=False))
    ax.legend(
        seen.values(), seen.keys(), title="algorithm", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
    )
    return _save(fig, path)


def _human(x: float, _pos=None) -> str:
    """Tick labels as 9.75, 950, 12k, 1.5M."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.4g}{suffix}"
    return f"{x:g}"


def _pad(ax, values: pd.Series) -> None:
    """Room around the markers, also when every algorithm has the same cost."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo if hi > lo else max(abs(hi) * 0.1, 1.0)
    ax.set_xlim(lo - 0.15 * span if hi > lo else lo - span, hi + 0.15 * span if hi > lo else hi + span)
