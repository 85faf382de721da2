"""The report as plain data: tables of text cells, figures, sample generations, provenance.

``header``, ``summary_table`` and ``build_pack`` decide *what* a report says;
markdown.py and the HTML template only decide how it looks. Every text here is raw (model output included): each
renderer escapes it for its own format, so model text never becomes markup.
"""

# pandas types df[mask], df[col] and .loc[...] as Series | ndarray | scalar unions, so these rules
# report pandas idioms here, not bugs
# pyright: reportAttributeAccessIssue=false, reportArgumentType=false, reportCallIssue=false, reportGeneralTypeIssues=false, reportOperatorIssue=false, reportReturnType=false

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlparse

import pandas as pd

from kdbench import names, tracking
from kdbench.errors import UserError
from kdbench.report import items
from kdbench.report.leaderboard import SummaryColumn, TaskInfo, latest, short_ref, teacher_ahead

DEFAULT_UI = "http://127.0.0.1:5000"  # what `mlflow ui` serves
MAX_CHARS = 600  # longer generations are cut in the report (the artifact keeps all)


@dataclass
class Cell:
    text: str
    best: bool = False  # marked: the significantly best distilled student in its column, or tied best
    href: str | None = None
    code: bool = False  # an identifier (run id, hash, model path)


@dataclass
class Table:
    head: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # per row: teacher | before | student | other
    left: int = 1  # how many leading columns are text (left-aligned); the rest are numbers
    groups: list[tuple[str, int]] = field(default_factory=list)  # a header row above head: (label, span)

    def full_head(self) -> list[str]:
        """Each column's header with its group's label in front (for one-row headers)."""
        labels = [g for g, span in self.groups for _ in range(span)]
        return [f"{g} {h}".strip() for g, h in zip(labels, self.head, strict=False)] if labels else list(self.head)


@dataclass
class Figure:
    file: str  # PNG file name, next to the report
    caption: str


@dataclass
class Sample:
    task: str
    item: str  # the eval item's id (or doc_id)
    question: str
    target: str
    rows: list[list[str]]  # [model, prediction, score]


@dataclass
class Setting:
    teacher: str
    student: str
    scores: Table
    gaps: Table
    costs: Table
    provenance: list[tuple[str, Cell]]
    runs: Table
    samples: list[Sample]
    notes: list[str] = field(default_factory=list)  # caveats on the gap table
    score_notes: list[str] = field(default_factory=list)  # beside the scores: subsets, ties, missing items
    forgetting: Table | None = None  # scores on retention tasks outside the pack, before and after
    forgetting_notes: list[str] = field(default_factory=list)


@dataclass
class PackSection:
    name: str
    tasks: list[TaskInfo]
    settings: list[Setting]
    figure: Figure | None = None
    forgetting_figure: Figure | None = None
    csv: str = ""
    note: str = ""


@dataclass
class Report:
    title: str
    generated: str
    source: str
    code_version: str
    ui_url: str
    ui_command: str  # how to start the UI for a local store ('' for a server)
    filters: str
    summary: Table | None = None
    win_note: str = ""
    summary_notes: list[str] = field(default_factory=list)
    gap_figure: Figure | None = None
    packs: list[PackSection] = field(default_factory=list)


# ---------------------------------------------------------------- numbers as text


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _num(x: float, fmt: str) -> str:
    """x in percent or points, with one decimal; rounding noise (-1e-17) is no negative zero."""
    v = round(100 * x, 1)
    return f"{v if v != 0 else 0.0:{fmt}}"


def _interval(low, high, fmt: str = ".1f") -> str:
    if _nan(low) or _nan(high):
        return "[–]"
    return f"[{_num(low, fmt)}, {_num(high, fmt)}]"


def score(mean: float, n: int, low: float = math.nan, high: float = math.nan) -> str:
    """A score in percent with its 95% interval and the number of seeds: '55.0 [45.0, 65.0] (n=2)';
    '55.0 [–] (n=2)' without per-item samples; '–' without a score."""
    if _nan(n) or n == 0 or _nan(mean):
        return "–"
    return f"{_num(mean, '.1f')} {_interval(low, high)} (n={int(n)})"


def change(mean: float, low: float = math.nan, high: float = math.nan) -> str:
    """A change in points (of a ratio), signed, with its 95% interval: '-3.5 [-6.0, -1.0]', '+1.2 [–]', '–'."""
    if _nan(mean):
        return "–"
    return f"{_num(mean, '+.1f')} {_interval(low, high, fmt='+.1f')}"


def pct(mean: float, std: float = math.nan, n: int = 1) -> str:
    """A ratio in percent with its spread over seeds when there are several."""
    if _nan(mean):
        return "–"
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 and not _nan(std) else f"{100 * mean:.1f}"


def amount(x: float, unit: str = "") -> str:
    """A cost: seconds under 100 with one decimal, everything else as a whole number."""
    if _nan(x):
        return "–"
    return f"{x:,.1f}" if 0 < abs(x) < 100 and unit == "s" else f"{x:,.0f}"


def run_link(ui: str, experiment_id: str, run_id: str) -> str:
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}"


def ui_base(uri: str, ui_url: str | None) -> str:
    """The MLflow UI for links: the tracking server itself, else the given (or default) UI URL."""
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    if ui_url and not ui_url.startswith(("http://", "https://")):
        raise UserError(f"--mlflow-ui-url {ui_url!r}: expected an http(s) URL such as {DEFAULT_UI}")
    return (ui_url or DEFAULT_UI).rstrip("/")


def model_label(row) -> str:
    return {names.ROLE_TEACHER: "teacher", names.ROLE_BEFORE: "student (before)"}.get(row[names.ROLE], str(row["row"]))


# ---------------------------------------------------------------- tables of one setting


def _best(board: pd.DataFrame, col: str, higher: bool) -> set:
    """Index of the distilled students holding the best value of a cost column (all of them on a tie),
    or none when fewer than two compete or they all tie. Scores are marked by significance instead."""
    s = pd.to_numeric(board.loc[board[names.ROLE] == names.ROLE_AFTER, col], errors="coerce").dropna()
    if len(s) < 2 or math.isclose(s.max(), s.min(), rel_tol=1e-12, abs_tol=1e-12):
        return set()
    target = s.max() if higher else s.min()
    return set(s.index[(s - target).abs() <= 1e-12])


def _kind(role: str) -> str:
    return {names.ROLE_TEACHER: "teacher", names.ROLE_BEFORE: "before", names.ROLE_AFTER: "student"}.get(role, "other")


def _table(board: pd.DataFrame, head: list[str], columns: list[tuple[set, Callable[[pd.Series], str]]]) -> Table:
    """columns: (board index of the marked cells, row -> text)."""
    t = Table(["model", *head])
    for idx, r in board.iterrows():
        cells = [Cell(model_label(r))]
        for marked, fmt in columns:
            text = fmt(r)
            cells.append(Cell(text, best=idx in marked and text != "–"))
        t.rows.append(cells)
        t.kinds.append(_kind(r[names.ROLE]))
    return t


def _marked(board: pd.DataFrame, task: TaskInfo) -> set:
    """Board index of the cells marked best in a task's score column (by items.annotate's paired tests)."""
    col = f"{task.name}.best"
    return set(board.index[board[col].astype(bool)]) if col in board else set()


def _get(r: pd.Series, key: str) -> float:
    return r[key] if key in r else math.nan


def scores_table(board: pd.DataFrame, tasks: list[TaskInfo]) -> Table:
    head = [f"{t.name} {t.metric} (%)" for t in tasks]
    cols = [
        (
            _marked(board, t),
            lambda r, t=t: score(
                r[f"{t.name}.mean"], r[f"{t.name}.n"], _get(r, f"{t.name}.low"), _get(r, f"{t.name}.high")
            ),
        )
        for t in tasks
    ]
    return _table(board, head, cols)


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _names(labels: list[str]) -> str:
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def subset_note(board: pd.DataFrame, task: TaskInfo, col: items.Column | None, prefix: str = "") -> str:
    """'law_mc acc: stratified subset of 40 of 208 items.' when the evaluation scored fewer items than the
    task holds (items evaluated: the runs' <task>.n, else the items in their samples), else ''."""
    if not task.total:
        return ""
    key = f"{prefix}{task.name}.items"
    counts = sorted({int(x) for x in pd.to_numeric(board[key], errors="coerce").dropna()}) if key in board else []
    if not counts and col is not None and col.own:
        counts = sorted(set(col.own.values()))
    if not counts or max(counts) >= task.total:
        return ""
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]} (the rows differ)"
    return f"{task.name} {task.metric}: stratified subset of {n} of {task.total} items."


def item_notes(task: TaskInfo, col: items.Column | None) -> list[str]:
    """What the interval of each row rests on: rows without samples, items missing for some rows."""
    if col is None:
        return []
    out = []
    what = f"{task.name} {task.metric}"
    if col.without:
        out.append(
            f"{what}: no per-item samples for {_names(col.without)}, so no interval there"
            + (" and no significance marks in this column." if col.status == items.NO_SAMPLES else ".")
        )
    if col.rows and (len(set(col.own.values())) > 1 or max(col.own.values()) > col.shared):
        have = ", ".join(f"{label} {n}" for label, n in col.own.items())
        out.append(
            f"{what}: items are missing for some rows (items per row: {have}); intervals and tests use the "
            f"{col.shared} items every row has, the means each row's own items."
        )
    elif not col.rows and col.own:
        out.append(f"{what}: the rows share no item, so there are no intervals or significance marks.")
    return out


def mark_note(task: TaskInfo, col: items.Column | None) -> str:
    """Why the column's marks are what they are (nothing when fewer than two students or no samples)."""
    if col is None or col.status in (items.ALONE, items.NO_SAMPLES):
        return ""
    what = f"{task.name} {task.metric}"
    others = {k: v for k, v in col.p.items() if k != col.leader}
    if col.status == items.MARKED:
        return (
            f"{what}: {col.leader} is significantly better than every other distilled student "
            f"(paired test against each, {_p(max(others.values())).replace('=', '≤')})."
        )
    if col.status == items.TIED:
        tied = [k for k in col.best if k != col.leader]
        below = [k for k in others if k not in col.best]
        return (
            f"{what}: the bold cells are a tie for best: {col.leader} leads, but {_names(tied)} "
            f"{'is' if len(tied) == 1 else 'are'} not significantly below it "
            f"({', '.join(f'{k} {_p(col.p[k])}' for k in tied)}); {_names(below)} "
            f"{'is' if len(below) == 1 else 'are'} ({', '.join(f'{k} {_p(col.p[k])}' for k in below)})."
        )
    return (
        f"{what}: nothing marked: no distilled student is significantly below the leader {col.leader} "
        f"({', '.join(f'{k} {_p(v)}' for k, v in others.items())}), so all tie."
    )


def gaps_table(board: pd.DataFrame, tasks: list[TaskInfo]) -> tuple[Table, list[str]]:
    """The gap table, and a note for each task where the teacher does not beat the student
    before (there gap closed is no measure of progress, and no best value is marked)."""
    head, cols, notes = [], [], []
    for t in tasks:
        ahead = teacher_ahead(board, t)
        if not ahead:
            notes.append(
                f"On {t.name} the teacher does not score above the student before, so gap closed "
                "(and its sign) says nothing about progress there."
            )
        marked = _marked(board, t)  # gap metrics are functions of the task's score: its paired test marks them
        for g, label in [
            (names.GAP, "gap (pts)"),
            (names.GAP_CLOSED, "gap closed (%)"),
            (names.RETENTION, "retention (%)"),
            (names.CHANCE_NORM, "chance-norm. (%)"),
        ]:
            head.append(label)
            cols.append(
                (
                    marked if ahead or g != names.GAP_CLOSED else set(),
                    lambda r, k=f"{t.name}.{g}": pct(r[k], r[f"{k}_std"], r["seeds"]),
                )
            )
    table = _table(board, head, cols)
    table.groups = [("", 1)] + [(f"{t.name} {t.metric}", 4) for t in tasks]
    return table, notes


COST_COLUMNS = [  # (metric, header, lower is better, unit)
    (names.COST_TEACHER_TOKENS, "teacher tokens", True, ""),
    (names.COST_TRAIN_TOKENS, "train tokens", True, ""),
    (names.COST_TRAIN_SECONDS, "train wall (s)", True, "s"),
    (names.COST_CPU_SECONDS, "CPU (s)", True, "s"),
    (names.COST_GPU_SECONDS, "GPU (s)", True, "s"),
    (names.COST_PEAK_MEM_MB, "peak mem (MB)", True, ""),
    (names.COST_TOKENS_PER_S, "train tokens/s", False, ""),
    (names.COST_EVAL_SECONDS, "eval (s)", True, "s"),
]


def costs_table(board: pd.DataFrame) -> Table:
    cols = [(_best(board, c, not lower), lambda r, c=c, u=u: amount(r[c], u)) for c, _, lower, u in COST_COLUMNS]
    return _table(board, [h for _, h, _, _ in COST_COLUMNS], cols)


def forgetting_table(
    board: pd.DataFrame, rtasks: list[TaskInfo], columns: dict[str, items.Column]
) -> tuple[Table | None, list[str]]:
    """Per retention task the score (before: the student before's row; after: each algorithm's) and the
    change after - before in points; then the mean change over the tasks. None when no row of the
    setting has a retention score."""
    rp = names.RETENTION_PREFIX
    has = [f"{rp}{t.name}.mean" for t in rtasks if f"{rp}{t.name}.mean" in board]
    rows = board[board[has].notna().any(axis=1)] if has else board.iloc[0:0]
    if rows.empty:
        return None, []
    head, cols = [], []
    for t in rtasks:
        k = f"{rp}{t.name}"
        head += ["score (%)", "change (pts)"]
        cols.append(
            (set(), lambda r, k=k: score(r[f"{k}.mean"], r[f"{k}.n"], _get(r, f"{k}.low"), _get(r, f"{k}.high")))
        )
        cols.append(
            (
                set(),
                lambda r, k=k: (
                    change(r[f"{k}.delta"], _get(r, f"{k}.delta_low"), _get(r, f"{k}.delta_high"))
                    if r[names.ROLE] == names.ROLE_AFTER
                    else "–"
                ),
            )
        )
    md = names.RETENTION_MEAN_DELTA
    head.append("mean change (pts)")
    cols.append(
        (
            set(),
            lambda r: (
                change(r[md], _get(r, f"{md}_low"), _get(r, f"{md}_high")) if r[names.ROLE] == names.ROLE_AFTER else "–"
            ),
        )
    )
    table = _table(rows, head, cols)
    table.groups = [("", 1)] + [(f"{t.name} {t.metric}", 2) for t in rtasks] + [("all retention tasks", 1)]
    notes = [n for t in rtasks for n in item_notes(t, columns.get(t.name))]
    return table, notes


# ---------------------------------------------------------------- provenance and samples


def _text(x) -> str:
    return "–" if x is None or _nan(x) or x == "" else str(x)


def _values(runs: pd.DataFrame, col: str) -> str:
    vals = sorted({str(v) for v in runs[col].dropna() if str(v)}) if col in runs else []
    return ", ".join(vals) or "–"


def provenance(runs: pd.DataFrame, teacher: str, student: str, ui: str) -> list[tuple[str, Cell]]:
    exp = runs["experiment_id"].iloc[0]
    return [
        ("teacher", Cell(teacher, code=True)),
        ("student", Cell(student, code=True)),
        ("pack version", Cell(_values(runs, "pack_version"))),
        ("pack data hash", Cell(_values(runs, "pack_data_hash"), code=True)),
        ("training data hash", Cell(_values(runs, "data_hash"), code=True)),
        ("code version", Cell(_values(runs, "code_version"), code=True)),
        ("MLflow experiment", Cell(f"experiment {exp}", href=f"{ui}/#/experiments/{exp}")),
    ]


def runs_table(runs: pd.DataFrame, ui: str) -> Table:
    t = Table(["model", "seed", "MLflow run", "started (UTC)", "code version"], left=5)
    order = {names.ROLE_TEACHER: 0, names.ROLE_BEFORE: 1, names.ROLE_ELICITATION: 2, names.ROLE_AFTER: 3}
    runs = runs.assign(_o=runs[names.ROLE].map(order), _a=runs.get("algorithm", ""), _s=runs.get("seed", ""))
    for _, r in runs.sort_values(["_o", "_a", "_s"], kind="stable").iterrows():
        label = (
            "elicitation (teacher data)"
            if r[names.ROLE] == names.ROLE_ELICITATION
            else model_label({names.ROLE: r[names.ROLE], "row": r.get(names.ALGORITHM, "")})
        )
        t.rows.append(
            [
                Cell(label),
                Cell(_text(r.get("seed"))),
                Cell(r["run_id"], href=run_link(ui, r["experiment_id"], r["run_id"]), code=True),
                Cell(f"{r['start_time']:%Y-%m-%d %H:%M}"),
                Cell(_text(r.get("code_version")), code=True),
            ]
        )
        t.kinds.append(_kind(r[names.ROLE]) if r[names.ROLE] != names.ROLE_ELICITATION else "other")
    return t


def _cut(text) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= MAX_CHARS else s[:MAX_CHARS] + " […]"


def _sample_score(item: dict) -> str:
    parts = []
    if item.get("rougeL") is not None:
        parts.append(f"rougeL {float(item['rougeL']):.2f}")
    if "correct" in item:
        parts.append("exact ✓" if item["correct"] else "exact ✗")
    return ", ".join(parts)


def samples_for(
    tasks: list[TaskInfo], sources: list[tuple[str, str]], samples: dict[str, dict], per_task: int
) -> list[Sample]:
    """The first ``per_task`` items (by doc_id) of each generation task, one row per model.

    sources: [(model label, run id)] in the order the rows appear."""
    out = []
    for t in [t for t in tasks if t.kind == "generation"]:
        by_model = {label: {s["doc_id"]: s for s in samples.get(rid, {}).get(t.name, [])} for label, rid in sources}
        doc_ids = sorted({d for items in by_model.values() for d in items})[:per_task]
        for d in doc_ids:
            first = next(items[d] for items in by_model.values() if d in items)
            rows = []
            for label, _ in sources:
                item = by_model[label].get(d)
                rows.append(
                    [
                        label,
                        _cut(item.get("prediction")) if item else "(no sample logged)",
                        _sample_score(item) if item else "",
                    ]
                )
            out.append(
                Sample(t.name, str(first.get("id") or d), _cut(first.get("question")), _cut(first.get("target")), rows)
            )
    return out


def sample_sources(runs: pd.DataFrame, board: pd.DataFrame) -> list[tuple[str, str]]:
    """(label, run id): the teacher, the student before, and each algorithm's lowest seed."""
    out = []
    for _, r in board.iterrows():
        ids = runs[runs["run_id"].isin(r["run_ids"])]
        if ids.empty:
            continue
        if r[names.ROLE] == names.ROLE_AFTER:
            ids = ids.assign(_seed=pd.to_numeric(ids[names.SEED], errors="coerce")).sort_values("_seed")
            out.append((f"{r['row']} (seed {ids['seed'].iloc[0]})", ids["run_id"].iloc[0]))
        else:
            out.append((model_label(r), ids.sort_values("start_time")["run_id"].iloc[-1]))
    return out


# ---------------------------------------------------------------- one pack, the whole report


def setting_runs(df: pd.DataFrame, pack: str, setting: pd.DataFrame) -> pd.DataFrame:
    """The runs behind a setting's rows, plus the elicitation runs its students name."""
    ids = [rid for ids in setting["run_ids"] for rid in ids]
    runs = df[df["run_id"].isin(ids)]
    elicit = set(runs["elicitation_run"].dropna()) if "elicitation_run" in runs else set()
    extra = df[(df[names.PACK] == pack) & (df[names.ROLE] == names.ROLE_ELICITATION) & df["run_id"].isin(elicit)]
    return pd.concat([runs, latest(extra)]) if not extra.empty else runs


def ui_command(uri: str, ui: str) -> str:
    """How to serve the UI the links point at ('' when the tracking URI is a server)."""
    if uri.startswith(("http://", "https://")):
        return ""
    return f"mlflow ui --backend-store-uri {uri} --port {urlparse(ui).port or 5000}"


def header(cfg, name: str, ui: str, packs, algorithms, since) -> Report:
    uri = tracking.tracking_uri(cfg)
    filters = []
    if packs:
        filters.append(f"packs {', '.join(packs)}")
    if algorithms:
        filters.append(f"algorithms {', '.join(algorithms)}")
    if since:
        filters.append(f"runs started since {since}")
    title = "kdbench leaderboard" + (f": {name}" if name != "leaderboard" else "")
    return Report(
        title=title,
        generated=f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}",
        source=uri,
        code_version=tracking.code_version(),
        ui_url=ui,
        ui_command=ui_command(uri, ui),
        filters="; ".join(filters) or "all finished kdbench runs",
    )


def build_pack(
    df: pd.DataFrame,
    pack: str,
    tasks: list[TaskInfo],
    board: pd.DataFrame,
    ui: str,
    load_samples,
    per_task: int,
    evidence: items.Evidence | None = None,
    rtasks: list[TaskInfo] | None = None,
) -> PackSection:
    """A pack's section: per (teacher, student) setting its tables, provenance and samples.

    load_samples: run ids -> {run_id: samples.json content}; evidence: the board's per-item columns
    (items.annotate); rtasks: the retention tasks outside the pack."""
    evidence = evidence or items.Evidence()
    section = PackSection(pack, tasks, [])
    if any(t.inferred for t in tasks):
        section.note = (
            "The pack is not present here: its tasks were inferred from the metric names "
            "(accuracy taken as multiple choice with chance 25%)."
        )
    for (teacher, student), setting in board.groupby([names.TEACHER, names.STUDENT], sort=False):
        setting = setting.copy()
        runs = setting_runs(df, pack, setting)
        sources = sample_sources(runs, setting)
        samples = samples_for(tasks, sources, load_samples([rid for _, rid in sources]), per_task)
        gaps, notes = gaps_table(setting, tasks)
        columns = evidence.scores.get((str(teacher), str(student)), {})
        score_notes = [n for t in tasks if (n := subset_note(setting, t, columns.get(t.name)))]
        score_notes += [n for t in tasks if (n := mark_note(t, columns.get(t.name)))]
        score_notes += [n for t in tasks for n in item_notes(t, columns.get(t.name))]
        forgetting, forgetting_notes = forgetting_table(
            setting, rtasks or [], evidence.retention.get((str(teacher), str(student)), {})
        )
        section.settings.append(
            Setting(
                teacher=short_ref(teacher),
                student=short_ref(student),
                scores=scores_table(setting, tasks),
                gaps=gaps,
                costs=costs_table(setting),
                provenance=provenance(runs, teacher, student, ui),
                runs=runs_table(runs, ui),
                samples=samples,
                notes=notes,
                score_notes=score_notes,
                forgetting=forgetting,
                forgetting_notes=forgetting_notes,
            )
        )
    return section


def summary_table(
    columns: list[SummaryColumn],
    rates: pd.DataFrame,
    n_columns: int,
    forgetting: dict[str, tuple[float, float, float]] | None = None,
) -> Table:
    """Pack × algorithm headline scores with their intervals, the forgetting (when retention tasks were
    scored) and the mean win rate. Scores are marked as in the pack's scores table (paired tests); the
    best win rate is in bold."""
    rate = dict(zip(rates[names.ALGORITHM], rates["win_rate"], strict=False))
    labels = {r for c in columns for r in c.rows.index}
    algos = [a for a in rates[names.ALGORITHM] if a in labels]
    algos += sorted(a for a in labels if a not in algos and a not in ("teacher", "student before"))
    order = [r for r in ("teacher", "student before") if r in labels] + algos
    head = ["model", *[f"{c.label} (%)" for c in columns]]
    if forgetting:
        head.append("forgetting (pts)")
    t = Table([*head, f"mean win rate (%, {n_columns} columns)"])
    top = max(rate.values()) if len(rate) > 1 and len(set(rate.values())) > 1 else None
    for r in order:
        kind = {"teacher": "teacher", "student before": "before"}.get(r, "student")
        cells = [Cell({"student before": "student (before)"}.get(r, r))]
        for c in columns:
            if r not in c.rows.index:
                cells.append(Cell("–"))
                continue
            row, k = c.rows.loc[r], c.task.name
            text = score(row[f"{k}.mean"], row[f"{k}.n"], _get(row, f"{k}.low"), _get(row, f"{k}.high"))
            marked = f"{k}.best" in row and bool(row[f"{k}.best"])
            cells.append(Cell(text, best=marked and text != "–"))
        if forgetting:
            cells.append(Cell(change(*forgetting[r]) if r in forgetting else "–"))
        cells.append(Cell(pct(rate[r]), best=rate[r] == top) if r in rate else Cell("–"))
        t.rows.append(cells)
        t.kinds.append(kind)
    return t


def summary_notes(columns: list[SummaryColumn], evidence: dict[str, items.Evidence]) -> list[str]:
    """Ties and missing samples behind the summary's marks, one line per column that has either."""
    out = []
    for c in columns:
        col = evidence[c.pack].column(c.teacher, c.student, c.task.name) if c.pack in evidence else None
        if col is None:
            continue
        if col.status == items.TIED:
            out.append(f"{c.label}: the bold cells are a tie for best (none is significantly below the leader).")
        elif col.status == items.NO_SAMPLES:
            out.append(f"{c.label}: no marks, per-item samples are missing for {_names(col.without)}.")
    return out


def win_note(columns: dict[str, dict[str, float]], matrices: dict[str, dict], forgetting: bool = False) -> str:
    """The summary's note: the columns of the mean win rate and how each was decided."""
    contested = [c for c, v in columns.items() if len(v) > 1]
    by_mean = [c for c in contested if c not in matrices]
    text = (
        "Mean win rate over the (pack, task) columns: "
        + "; ".join(columns)
        + ". In each column an algorithm scores its share of the contests with the others: a significant win "
        "(paired test over items, p < 0.05) counts 1, a tie (no significant difference) 1/2, a significant "
        "loss 0."
    )
    if by_mean:
        text += (
            " Where per-item samples are missing for some algorithm, a column compares means instead (the "
            "higher mean wins, equal means tie): " + "; ".join(by_mean) + "."
        )
    text += " Each pack column of the table shows its first task's headline metric."
    if forgetting:
        text += (
            " forgetting (pts): the mean change on the retention tasks outside the pack, after − before "
            "(negative: the student forgot), averaged over the packs, with its 95% interval; not marked."
        )
    return text
