"""Render a report (document.Report) as GitHub-flavoured Markdown.

Every text is escaped with ``esc``: HTML is entity-escaped and Markdown's
punctuation backslash-escaped, newlines become ``<br>``, so a model's output
(``<script>``, ``| **x**``, links, headings) shows as the text it is.
"""

from __future__ import annotations

import html
import re

from kdbench.report import stats
from kdbench.report.document import Cell, Figure, PackSection, Report, Sample, Setting, Table

DEFINITIONS = [
    (
        "score",
        (
            "mean [low, high] (n=S), in percent: the mean over S seeds of the task's headline metric, and its "
            "95% interval over seeds and eval items; [–]: the row's runs logged no per-item samples, so no "
            "interval"
        ),
    ),
    ("95% interval and tests", stats.method()),
    (
        "bold (scores)",
        (
            "in each column the leading distilled student is bold only when the paired test finds it "
            "significantly better than every other distilled student; when some are not significantly below "
            "it, all of those are bold: several bold cells in a column are a tie for best; when none is "
            "significantly below the leader (all tie), or a student has no per-item samples, nothing is bold. "
            "The gap table's columns of a task carry the marks of its score column (they are functions of "
            "the score), gap closed only where the teacher beats the student before; costs mark the "
            "lowest (highest for tokens/s) value"
        ),
    ),
    ("gap", "teacher − student, in points of the task's headline metric"),
    (
        "gap closed",
        (
            "(student after − student before) / (teacher − student before): the share of the "
            "teacher–student gap that distillation recovered"
        ),
    ),
    ("retention", "student / teacher"),
    ("chance-normalized", "(score − chance) / (1 − chance): 0 at random guessing, 100 at perfect"),
    (
        "mean win rate",
        (
            "HELM-style: in each (pack, task) column an algorithm gets its share of the contests with the "
            "other algorithms on the task's headline metric: a significant win by the paired test counts 1, "
            "a tie 1/2, a significant loss 0 (columns without per-item samples compare means: the higher wins, "
            "equal means tie); averaged over columns"
        ),
    ),
    (
        "forgetting",
        (
            "scores on retention tasks outside the pack (other packs' tasks, public benchmarks) before and "
            "after distillation; change = after − before in points (negative: the student forgot), its 95% "
            "interval from the same bootstrap, items paired; forgetting (pts) in the summary is the mean "
            "change over the retention tasks"
        ),
    ),
    ("domain gain", "student after − student before on the pack's headline task, in points"),
    (
        "stratified subset",
        (
            "the evaluation scored N of the task's M items, drawn across the task's strata; scores and "
            "intervals are over those N items"
        ),
    ),
]

FORGETTING_TERMS = ("forgetting", "domain gain")


def definitions(r: Report) -> list[tuple[str, str]]:
    """The definitions a report needs: forgetting's only when some run scored retention tasks."""
    forgetting = any(s.forgetting is not None for p in r.packs for s in p.settings)
    return [(k, v) for k, v in DEFINITIONS if forgetting or k not in FORGETTING_TERMS]


LEGEND = (
    "Scores are percentages: mean [95% interval over seeds and eval items] (n = number of seeds); [–]: no "
    "per-item samples, so no interval. **Bold**: the best distilled student, marked only where a paired "
    "test over items finds it significantly better (p < 0.05) than every other one; several bold cells "
    "in a column are a tie for best, and a column where all tie has none. Method: see Definitions."
)
GAP_NOTE = (
    "Mean ± std over seeds. Bold: the marks of the task's score column (the gap metrics are functions of "
    "the score, so the same paired test decides)."
)
FORGETTING_NOTE = (
    "Scores on tasks outside the pack, before distillation (the student before's row) and after (each "
    "algorithm's), and the change after − before in points with its 95% interval (negative: the student "
    "forgot); nothing is marked."
)
COST_NOTE = (
    "Means over seeds; teacher tokens are those generated for the training data, charged to every "
    "student trained on it."
)
SAMPLES_NOTE = (
    "The first items of each generation task, with the teacher, the student before and each "
    "algorithm (lowest seed) side by side."
)


def esc(text: object) -> str:
    """Escape text for Markdown (paragraphs and table cells): nothing in it becomes markup."""
    s = html.escape(str(text), quote=False)
    for ch in "\\`*_[]|#~":
        s = s.replace(ch, "\\" + ch)
    return s.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>")


def code(text: object) -> str:
    """An identifier as inline code, unless it holds characters a code span cannot carry."""
    s = str(text)
    return esc(s) if any(ch in s for ch in "`|\n<>&") or not s else f"`{s}`"


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, spaces to '-', other punctuation dropped."""
    return "".join(ch for ch in heading.lower().replace(" ", "-") if ch.isalnum() or ch in "-_")


# the numbers document.py writes ('55.0 [45.0, 65.0] (n=2)', '-3.5 [–]', '1,000'): no text, no link
# (a space always separates ']' from '('), so their brackets stay as they are and the source reads well
_NUMBER = re.compile(r"[-+0-9.,±– ]*(\[[-+0-9.,– ]*\])?( \(n=\d+\))?")


def cell(c: Cell) -> str:
    text = code(c.text) if c.code else c.text if _NUMBER.fullmatch(c.text) else esc(c.text)
    if c.href:
        text = f"[{text}]({c.href})"
    return f"**{text}**" if c.best else text


def table(t: Table) -> str:
    align = ["---"] * t.left + ["---:"] * (len(t.head) - t.left)
    lines = ["| " + " | ".join(esc(h) for h in t.full_head()) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def _sample(s: Sample, level: str) -> list[str]:
    return [
        f"{level} {esc(s.task)} · {esc(s.item)}",
        "",
        f"**Question:** {esc(s.question)}<br>**Reference:** {esc(s.target)}",
        "",
        "| model | generation | score |",
        "|---|---|---|",
        *[f"| {esc(m)} | {esc(p) if p else '*(empty)*'} | {esc(sc)} |" for m, p, sc in s.rows],
        "",
    ]


def _notes(notes: list[str]) -> list[str]:
    return [*[f"- {esc(n)}" for n in notes], ""] if notes else []


def figure(f: Figure | None) -> list[str]:
    return [f"![{esc(f.caption)}]({f.file})", "", f"*{esc(f.caption)}*", ""] if f else []


def _setting(s: Setting, level: str, figure_md: list[str], forgetting_md: list[str]) -> list[str]:
    out = [
        f"Teacher {code(s.teacher)}, student {code(s.student)}.",
        "",
        f"{level} Scores",
        "",
        table(s.scores),
        "",
        *_notes(s.score_notes),
        f"{level} Gap to the teacher",
        "",
        GAP_NOTE,
        "",
        table(s.gaps),
        "",
        *[x for n in s.notes for x in (f"*{esc(n)}*", "")],
    ]
    if s.forgetting is not None:
        out += [f"{level} Forgetting", "", FORGETTING_NOTE, "", table(s.forgetting), "", *_notes(s.forgetting_notes)]
        out += forgetting_md
    out += [
        f"{level} Cost",
        "",
        COST_NOTE,
        "",
        table(s.costs),
        "",
        *figure_md,
    ]
    if s.samples:
        out += [f"{level} Sample generations", "", SAMPLES_NOTE, ""]
        for sample in s.samples:
            out += _sample(sample, level + "#")
    out += [f"{level} Provenance", ""]
    out += [f"- {esc(k)}: {cell(v)}" for k, v in s.provenance]
    out += ["", table(s.runs), ""]
    return out


def _pack(p: PackSection) -> list[str]:
    out = [f"## {esc(p.name)}", ""]
    if p.note:
        out += [esc(p.note), ""]
    if not p.settings:
        return out + ["No runs yet.", ""]
    many = len(p.settings) > 1
    forgetting_at = next((i for i, s in enumerate(p.settings) if s.forgetting is not None), None)
    for i, s in enumerate(p.settings):
        if many:
            out += [f"### {esc(s.student)} distilled from {esc(s.teacher)}", ""]
        out += _setting(
            s,
            "####" if many else "###",
            figure(p.figure) if i == 0 else [],
            figure(p.forgetting_figure) if i == forgetting_at else [],
        )
    if p.csv:
        out += [f"All numbers of this pack: [{esc(p.csv)}]({p.csv}).", ""]
    return out


def render(r: Report) -> str:
    """The whole report as one Markdown document."""
    generated = (
        f"Generated {esc(r.generated)} from {code(r.source)} (code {code(r.code_version)}); "
        f"selection: {esc(r.filters)}."
    )
    out = [f"# {esc(r.title)}", "", generated, "", LEGEND, ""]
    if r.ui_command:
        out += [f"Run ids link to the MLflow UI at {esc(r.ui_url)}; start it with {code(r.ui_command)}.", ""]
    else:
        out += [f"Run ids link to the MLflow UI of the tracking server {esc(r.ui_url)}.", ""]
    if not r.packs:
        return "\n".join(out + ["No finished kdbench runs match."]) + "\n"
    out += [
        "Contents: "
        + " · ".join(
            [
                *(["[summary](#summary-across-packs)"] if r.summary is not None else []),
                *[f"[{esc(p.name)}](#{anchor(p.name)})" for p in r.packs],
                "[definitions](#definitions)",
            ]
        ),
        "",
    ]
    if r.summary is not None:
        out += ["## Summary across packs", "", table(r.summary), "", *_notes(r.summary_notes), esc(r.win_note), ""]
    out += figure(r.gap_figure)
    for p in r.packs:
        out += _pack(p)
    out += ["## Definitions", "", *[f"- **{esc(k)}**: {esc(v)}" for k, v in definitions(r)], ""]
    return "\n".join(out) + "\n"
