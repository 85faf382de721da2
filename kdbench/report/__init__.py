"""Leaderboard reports from MLflow runs: ``write_report`` is the entry point."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from kdbench import tracking
from kdbench.report.collect import collect_runs
from kdbench.report.leaderboard import leaderboard, task_info, write_csv
from kdbench.report.markdown import esc, table


def write_report(cfg, packs: list[str] | None = None, algorithms: list[str] | None = None,
                 since: str | None = None, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write <out_dir>/<name>.md (and .csv per pack); returns the paths written."""
    out = Path(out_dir or cfg.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = collect_runs(cfg, packs, algorithms, since)
    name = packs[0] if packs and len(packs) == 1 else "leaderboard"
    uri = tracking.tracking_uri(cfg)
    lines = [f"# kdbench leaderboard{': ' + esc(name) if name != 'leaderboard' else ''}", "",
             f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} from `{uri}` "
             f"(code {tracking.code_version()}). Scores in percent, mean ± std over seeds (n runs).", ""]
    paths: dict[str, Path] = {}
    if df.empty:
        lines += ["No finished kdbench runs match."]
    for pack in sorted(df["pack"].unique()) if not df.empty else []:
        tasks = task_info(pack, df)
        board = leaderboard(df, pack, tasks)
        lines += [f"## {esc(pack)}", ""]
        if board.empty:
            lines += ["No runs yet.", ""]
            continue
        for (teacher, student), setting in board.groupby(["teacher", "student"], sort=False):
            lines += [f"Teacher `{esc(teacher)}`, student `{esc(student)}`.", "", table(setting, tasks), ""]
        paths[f"{pack}.csv"] = write_csv(board, out / f"{pack}.csv")
    md = out / f"{name}.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    paths["markdown"] = md
    return paths
