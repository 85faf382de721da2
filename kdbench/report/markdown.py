"""Render a report (document.Report) as GitHub-flavoured Markdown.

Every text is escaped with ``esc``: HTML is entity-escaped and Markdown's
punctuation backslash-escaped, newlines become ``<br>``, so a model's output
(``<script>``, ``| **x**``, links, headings) shows as the text it is.
"""

from __future__ import annotations

import html

from kdbench.report.document import Cell, PackSection, Report, Sample, Setting, Table

DEFINITIONS = [
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
            "HELM-style: in each (pack, task) column an algorithm gets the fraction of the other "
            "algorithms it beats on the task's headline metric (ties count half); averaged over columns"
        ),
    ),
]

LEGEND = (
    "Scores are percentages: mean ± std over seeds, n = number of seeds. **Bold**: the best "
    "distilled student in its column."
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


def cell(c: Cell) -> str:
    text = code(c.text) if c.code else esc(c.text)
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


def _setting(s: Setting, level: str, figure_md: list[str]) -> list[str]:
    out = [
        f"Teacher {code(s.teacher)}, student {code(s.student)}.",
        "",
        f"{level} Scores",
        "",
        table(s.scores),
        "",
        f"{level} Gap to the teacher",
        "",
        table(s.gaps),
        "",
        *[x for n in s.notes for x in (f"*{esc(n)}*", "")],
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
    figure = [f"![{esc(p.figure.caption)}]({p.figure.file})", "", f"*{esc(p.figure.caption)}*", ""] if p.figure else []
    many = len(p.settings) > 1
    for i, s in enumerate(p.settings):
        if many:
            out += [f"### {esc(s.student)} distilled from {esc(s.teacher)}", ""]
        out += _setting(s, "####" if many else "###", figure if i == 0 else [])
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
        out += ["## Summary across packs", "", table(r.summary), "", esc(r.win_note), ""]
    if r.gap_figure:
        out += [f"![{esc(r.gap_figure.caption)}]({r.gap_figure.file})", "", f"*{esc(r.gap_figure.caption)}*", ""]
    for p in r.packs:
        out += _pack(p)
    out += ["## Definitions", "", *[f"- **{esc(k)}**: {esc(v)}" for k, v in DEFINITIONS], ""]
    return "\n".join(out) + "\n"
