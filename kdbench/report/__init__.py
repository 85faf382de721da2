"""Leaderboard reports from MLflow runs: ``write_report`` is the entry point.

collect (MLflow -> DataFrame) -> leaderboard (per-pack tables, summary, win
rates) -> items (per-item samples: intervals and paired tests, with stats) ->
plots (PNG) -> document (what the report says) -> markdown / html.
"""

# pandas types df[mask], df[col] and .loc[...] as Series | ndarray | scalar unions, so these rules
# report pandas idioms here, not bugs
# pyright: reportAttributeAccessIssue=false, reportArgumentType=false

from __future__ import annotations

import re
from pathlib import Path

from kdbench import names, tracking
from kdbench.report import document, html, items, markdown, plots
from kdbench.report.collect import collect_runs, load_samples, read_client
from kdbench.report.leaderboard import (
    leaderboard,
    retention_tasks,
    summary,
    task_info,
    win_columns,
    win_rates,
    write_csv,
)

__all__ = ["collect_runs", "write_report"]


def _slug(name: str) -> str:
    """A file-name-safe form of a report or pack name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "report"


def write_report(
    cfg,
    packs: list[str] | None = None,
    algorithms: list[str] | None = None,
    since: str | None = None,
    out_dir: str | Path | None = None,
    name: str | None = None,
    ui_url: str | None = None,
) -> dict[str, Path]:
    """Write <out>/<name>.md, <name>.html, <name>-*.png and a CSV per pack; returns the paths.

    name defaults to the pack's name for one pack, else 'leaderboard'; ui_url is where the
    MLflow UI runs for run links when the tracking URI is not a server (default
    http://127.0.0.1:5000, what `mlflow ui` serves)."""
    out = Path(out_dir or cfg.report_dir)
    uri = tracking.tracking_uri(cfg)
    ui = document.ui_base(uri, ui_url)
    df = collect_runs(cfg, packs, algorithms, since)
    name = _slug(name or (packs[0] if packs and len(packs) == 1 else "leaderboard"))
    report = document.header(cfg, name, ui, packs, algorithms, since)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if not df.empty:
        evals = df[df[names.ROLE].isin(names.EVAL_ROLES)]
        pack_names = sorted(evals[names.PACK].dropna().unique())
        tasks = {p: task_info(p, evals[evals[names.PACK] == p], where=cfg.pack) for p in pack_names}
        rtasks = {p: retention_tasks(evals[evals[names.PACK] == p]) for p in pack_names}
        boards = {p: leaderboard(evals, p, tasks[p], rtasks[p]) for p in pack_names}
        client = read_client(cfg)[0]
        samples = load_samples(
            client, [rid for b in boards.values() if not b.empty for ids in b["run_ids"] for rid in ids]
        )
        evidence = {}
        for p in pack_names:
            boards[p], evidence[p] = items.annotate(boards[p], tasks[p], rtasks[p], samples)
        algos = sorted(
            {r for b in boards.values() if not b.empty for r in b.loc[b[names.ROLE] == names.ROLE_AFTER, "row"]}
        )
        style = plots.styles(algos)
        columns, matrices = win_columns(boards, tasks, evidence)
        rates = win_rates(columns, matrices)
        summ = summary(boards, tasks)
        if summ:
            forgetting = items.forgetting_summary(boards, evidence)
            report.summary = document.summary_table(summ, rates, len(columns), forgetting)
            report.summary_notes = document.summary_notes(summ, evidence)
            report.win_note = document.win_note(columns, matrices, bool(forgetting))
        gap_png = plots.gap_closed_bars(boards, tasks, style, out / f"{name}-gap-closed.png")
        if gap_png:
            report.gap_figure = document.Figure(
                gap_png.name,
                "Gap closed per algorithm and pack, on each "
                "pack's headline task (mean ± std over seeds; 100% = teacher).",
            )
            paths["gap-closed.png"] = gap_png
        for p in pack_names:
            board = boards[p]
            section = document.build_pack(
                df,
                p,
                tasks[p],
                board,
                ui,
                lambda ids: {i: samples[i] for i in ids if i in samples},
                cfg.eval.samples_per_task,
                evidence[p],
                rtasks[p],
            )
            if not board.empty:
                png = plots.score_vs_cost(board, tasks[p], p, style, out / f"{name}-cost-{_slug(p)}.png")
                if png:
                    section.figure = document.Figure(
                        png.name,
                        f"{p}: headline score against training tokens "
                        "and training wall time, one marker per algorithm.",
                    )
                    paths[f"cost-{p}.png"] = png
                png = plots.gain_vs_forgetting(board, tasks[p], p, style, out / f"{name}-forgetting-{_slug(p)}.png")
                if png:
                    h = tasks[p][0]
                    section.forgetting_figure = document.Figure(
                        png.name,
                        f"{p}: domain gain on {h.name} {h.metric} (student after − before, points) against the "
                        "mean change on the retention tasks outside the pack (points; left of 0: forgot), one "
                        "marker per algorithm; bars: 95% intervals where the runs logged per-item samples.",
                    )
                    paths[f"forgetting-{p}.png"] = png
                csv = out / (f"{_slug(p)}.csv" if _slug(p) == name else f"{name}-{_slug(p)}.csv")
                paths[f"{p}.csv"] = write_csv(board, csv)
                section.csv = csv.name
            report.packs.append(section)
    md = out / f"{name}.md"
    md.write_text(markdown.render(report), encoding="utf-8")
    page = out / f"{name}.html"
    page.write_text(html.render(report, out), encoding="utf-8")
    return {"markdown": md, "html": page, **paths}
