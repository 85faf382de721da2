"""Render leaderboards as GitHub-flavoured Markdown. Model text is escaped."""

from __future__ import annotations

import html
import math

import pandas as pd

from kdbench.report.leaderboard import TaskInfo


def esc(text: object) -> str:
    """Escape for a Markdown table cell: HTML entities, pipes, backticks, newlines."""
    s = html.escape(str(text), quote=False)
    for ch in "\\`*_[]|#<>":
        s = s.replace(ch, "\\" + ch) if ch not in "<>" else s
    return s.replace("\n", " ")


def pct(x: float, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def score(mean: float, std: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "–"
    return f"{100 * mean:.1f} ± {100 * std:.1f} (n={n})" if n > 1 else f"{100 * mean:.1f} (n=1)"


def best_index(values: pd.Series, higher: bool = True):
    v = pd.to_numeric(values, errors="coerce")
    if v.dropna().empty:
        return None
    return v.idxmax() if higher else v.idxmin()


def table(board: pd.DataFrame, tasks: list[TaskInfo]) -> str:
    """The leaderboard of one setting; the best student value in each column in bold."""
    head = ["model", *[f"{t.name} ({t.metric})" for t in tasks]]
    first = tasks[0].name
    head += [f"gap ({first})", "gap closed", "retention", "chance-norm.", "train tokens", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    students = board[board["role"] == "student_after"]
    best = {f"{t.name}.mean": best_index(students[f"{t.name}.mean"]) for t in tasks}
    best[f"{first}.gap"] = best_index(students[f"{first}.gap"], higher=False)
    best[f"{first}.gap_closed"] = best_index(students[f"{first}.gap_closed"])
    best[f"{first}.retention"] = best_index(students[f"{first}.retention"])
    best[f"{first}.chance_norm"] = best_index(students[f"{first}.chance_norm"])

    def cell(idx, col, text):
        return f"**{text}**" if best.get(col) == idx and text != "–" else text

    for idx, r in board.iterrows():
        label = {"teacher": "teacher", "student_before": "student (before)"}.get(r["role"], esc(r["row"]))
        cells = [label]
        cells += [cell(idx, f"{t.name}.mean", score(r[f"{t.name}.mean"], r[f"{t.name}.std"], r[f"{t.name}.n"]))
                  for t in tasks]
        cells += [cell(idx, f"{first}.gap", pct(r[f"{first}.gap"])),
                  cell(idx, f"{first}.gap_closed", pct(r[f"{first}.gap_closed"], 0) + ("%" if not
                       math.isnan(r[f"{first}.gap_closed"]) else "")),
                  cell(idx, f"{first}.retention", pct(r[f"{first}.retention"], 0) + ("%" if not
                       math.isnan(r[f"{first}.retention"]) else "")),
                  cell(idx, f"{first}.chance_norm", pct(r[f"{first}.chance_norm"])),
                  "–" if math.isnan(r["cost.train_tokens"]) else f"{r['cost.train_tokens']:,.0f}",
                  "–" if math.isnan(r["cost.train_seconds"]) else f"{r['cost.train_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
