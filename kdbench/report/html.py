"""Render a report (document.Report) as one self-contained HTML page.

The page comes from the Jinja2 template reports/templates/report.html.j2 with
autoescaping on, so model text is always text. Figures are embedded as base64
data URIs and the CSS is inline: the file opens anywhere, makes no requests and
needs no JavaScript.
"""

from __future__ import annotations

import base64
from pathlib import Path

from kdbench.errors import RuntimeFailure
from kdbench.report.document import Report
from kdbench.report.markdown import FORGETTING_NOTE, GAP_NOTE, LEGEND, definitions

TEMPLATES = Path(__file__).resolve().parents[2] / "reports" / "templates"
TEMPLATE = "report.html.j2"


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render(r: Report, out_dir: Path, templates: Path = TEMPLATES) -> str:
    """The report as HTML; figures are read from out_dir and inlined."""
    import jinja2

    if not (templates / TEMPLATE).is_file():
        raise RuntimeFailure(
            f"the HTML report template {templates / TEMPLATE} is missing; it ships with the "
            "kdbench checkout (reports/templates/)"
        )
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    figures = [f for f in [r.gap_figure, *[x for p in r.packs for x in (p.figure, p.forgetting_figure)]] if f]
    images = {f.file: data_uri(out_dir / f.file) for f in figures}
    return env.get_template(TEMPLATE).render(
        report=r,
        images=images,
        definitions=definitions(r),
        legend=LEGEND.replace("**", ""),  # the Markdown legend as text
        gap_note=GAP_NOTE,
        forgetting_note=FORGETTING_NOTE,
    )
