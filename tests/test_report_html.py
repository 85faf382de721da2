"""Leaderboard reports from real MLflow runs: numbers, win rates, escaping, links, and the HTML
page as headless Chromium renders it.

The store is a temporary SQLite file with two packs (law, medicine), three algorithms and two
seeds, created through kdbench.tracking like the flow does, with samples.json artifacts.
"""

import os
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from kdbench import tracking
from kdbench.cli import main
from kdbench.config import load_config
from kdbench.data import content_hash
from kdbench.errors import KdbenchError
from kdbench.metrics import all_gaps
from kdbench.packs import load_pack
from kdbench.report import write_report
from kdbench.report.leaderboard import win_rates
from kdbench.report.markdown import esc

EVIL = "<script>alert(1)</script> | **x**"
# pack -> (mc task, qa task, teacher (mc, qa), before (mc, qa), {algo: [(mc, qa) per seed]})
SCORES = {
    "law": (
        "law_mc",
        "law_qa",
        (0.8, 0.5),
        (0.3, 0.1),
        {"sft": [(0.5, 0.3), (0.6, 0.3)], "fkl": [(0.4, 0.35), (0.4, 0.25)], "rkl": [(0.7, 0.2), (0.6, 0.2)]},
    ),
    "medicine": (
        "medicine_mc",
        "medicine_qa",
        (0.9, 0.6),
        (0.2, 0.0),
        {"sft": [(0.6, 0.4), (0.6, 0.2)], "fkl": [(0.8, 0.1), (0.7, 0.1)], "rkl": [(0.5, 0.5), (0.5, 0.3)]},
    ),
}


def _samples(qa: str, label: str, evil: bool = False) -> dict:
    """Seven generation items, logged out of doc_id order; the report shows the first five."""
    items = [
        {
            "doc_id": d,
            "id": f"{qa}-{d:03d}",
            "question": f"question {d}?",
            "target": f"answer {d}",
            "prediction": EVIL if evil and d == 0 else f"{label} says {d}",
            "correct": d == 1,
            "rougeL": 0.5,
        }
        for d in (6, 3, 0, 5, 1, 4, 2)
    ]
    return {qa: items}


def _run(c, exp, pack, role, name, metrics, tags, samples=None) -> str:
    full = {
        "kdbench.pack": pack,
        "kdbench.pack_version": "1.0.0",
        "kdbench.pack_data_hash": f"{pack}-hash",
        "kdbench.role": role,
        "kdbench.data_hash": f"{pack}-data",
        **tags,
    }
    with tracking.tracked_run(c, exp, content_hash(pack, role, name), name, full) as rid:
        tracking.log_all(c, rid, metrics=metrics)
        if samples is not None:
            c.log_dict(rid, samples, "samples.json")
    return rid


def _make_store(cfg) -> dict:
    """The runs a flow leaves for each pack; returns {pack: {experiment, runs: {label: id}}}."""
    c = tracking.client(cfg)
    made = {}
    for pack, (mc, qa, t, b, algos) in SCORES.items():
        exp = tracking.experiment_id(c, cfg, pack)
        ev = {
            "teacher": {mc: {"acc": t[0], "n": 40.0}, qa: {"rougeL": t[1], "n": 30.0}},
            "before": {mc: {"acc": b[0], "n": 40.0}, qa: {"rougeL": b[1], "n": 30.0}},
        }
        runs = {
            "teacher": _run(
                c,
                exp,
                pack,
                "teacher",
                f"{pack}/teacher",
                {f"{mc}.acc": t[0], f"{qa}.rougeL": t[1], "eval.seconds": 4.0},
                {"kdbench.teacher": "/models/T"},
                _samples(qa, "teacher"),
            ),
            "before": _run(
                c,
                exp,
                pack,
                "student_before",
                f"{pack}/student_before",
                {f"{mc}.acc": b[0], f"{qa}.rougeL": b[1], "eval.seconds": 2.0},
                {"kdbench.student": "/models/S"},
                _samples(qa, "before"),
            ),
            "elicitation": _run(
                c,
                exp,
                pack,
                "elicitation",
                f"{pack}/elicitation",
                {"teacher.generated_tokens": 5000},
                {"kdbench.teacher": "/models/T"},
            ),
        }
        for algo, seeds in algos.items():
            for seed, (a_mc, a_qa) in enumerate(seeds):
                after = {mc: {"acc": a_mc}, qa: {"rougeL": a_qa}}
                metrics = {
                    f"{mc}.acc": a_mc,
                    f"{qa}.rougeL": a_qa,
                    **all_gaps(ev["teacher"], ev["before"], after),
                    "cost.train_tokens": 1000 * (1 + list(algos).index(algo)),
                    "cost.train_seconds": 10.0 + seed,
                    "cost.wall_seconds": 11.0,
                    "cost.cpu_seconds": 20.0,
                    "cost.gpu_seconds": 0.0,
                    "cost.peak_mem_mb": 900.0,
                    "cost.teacher_tokens": 5000,
                    "cost.eval_seconds": 1.5,
                    "cost.tokens_per_s": 100.0,
                }
                tags = {
                    "kdbench.teacher": "/models/T",
                    "kdbench.student": "/models/S",
                    "kdbench.algorithm": algo,
                    "kdbench.seed": str(seed),
                    "kdbench.teacher_run": runs["teacher"],
                    "kdbench.before_run": runs["before"],
                    "kdbench.elicitation_run": runs["elicitation"],
                }
                runs[f"{algo}/{seed}"] = _run(
                    c,
                    exp,
                    pack,
                    "student_after",
                    f"{pack}/{algo}/seed{seed}",
                    metrics,
                    tags,
                    _samples(qa, f"{algo}{seed}", evil=(algo == "rkl" and seed == 0)),
                )
        made[pack] = {"experiment": exp, "runs": runs}
    return made


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    cfg = load_config(overrides={"pack": "law", "home": str(tmp / "home"), "report_dir": str(tmp / "rep")})
    made = _make_store(cfg)
    paths = write_report(cfg, out_dir=tmp / "out")
    return cfg, made, paths, tmp


def _line(md: str, start: str, after: str) -> str:
    """The first line starting with `start` below the heading line `after`."""
    lines = md.splitlines()
    i = lines.index(after)
    return next(line for line in lines[i:] if line.startswith(start))


def test_files_written(store):
    _, _, paths, tmp = store
    out = tmp / "out"
    assert paths["markdown"] == out / "leaderboard.md" and paths["html"] == out / "leaderboard.html"
    assert (out / "leaderboard-gap-closed.png").stat().st_size > 5000
    for pack in SCORES:
        assert (out / f"leaderboard-cost-{pack}.png").stat().st_size > 5000
        assert paths[f"{pack}.csv"] == out / f"leaderboard-{pack}.csv"
        assert "sft" in (out / f"leaderboard-{pack}.csv").read_text()


def test_scores_mean_std_n_and_best(store):
    md = store[2]["markdown"].read_text()
    law = "## law"
    assert _line(md, "| teacher |", law).startswith("| teacher | 80.0 (n=1) | 50.0 (n=1) |")
    assert _line(md, "| student (before) |", law).startswith("| student (before) | 30.0 (n=1) | 10.0 (n=1) |")
    assert _line(md, "| sft |", law) == "| sft | 55.0 ± 7.1 (n=2) | **30.0 ± 0.0 (n=2)** |"  # qa: tie with fkl
    assert _line(md, "| fkl |", law) == "| fkl | 40.0 ± 0.0 (n=2) | **30.0 ± 7.1 (n=2)** |"
    assert _line(md, "| rkl |", law) == "| rkl | **65.0 ± 7.1 (n=2)** | 20.0 ± 0.0 (n=2) |"
    assert _line(md, "| fkl |", "## medicine").startswith("| fkl | **75.0 ± 7.1 (n=2)** |")


def test_gap_table_student_before_and_chance(store):
    md = store[2]["markdown"].read_text()
    gaps = "### Gap to the teacher"
    head = _line(md, "| model |", gaps)
    assert "law\\_mc acc gap closed (%)" in head and "law\\_qa rougeL retention (%)" in head
    # the student before shows its own gap to the teacher: 80 - 30 points, retention 30/80
    before = _line(md, "| student (before) |", gaps).split(" | ")
    assert before[1:4] == ["50.0", "0.0", "37.5"]
    # sft on law_mc: gap closed per seed (0.5-0.3)/0.5 = 40%, (0.6-0.3)/0.5 = 60%
    sft = _line(md, "| sft |", gaps).split(" | ")
    assert sft[1:4] == ["25.0 ± 7.1", "50.0 ± 14.1", "68.8 ± 8.8"]
    rkl = _line(md, "| rkl |", gaps).split(" | ")
    assert rkl[1] == "**15.0 ± 7.1**" and rkl[2] == "**70.0 ± 14.1**"  # smallest gap, most closed
    # chance-normalized with the pack's own chance (1 / number of choices of its MC items)
    items = load_pack("law").eval_items["law_mc"]
    chance = sum(1 / len(i.choices) for i in items) / len(items)
    assert rkl[4] == f"**{100 * (0.65 - chance) / (1 - chance):.1f} ± {100 * 0.0707107 / (1 - chance):.1f}**"


def test_summary_and_win_rates_by_hand(store):
    md = store[2]["markdown"].read_text()
    s = "## Summary across packs"
    assert _line(md, "| model |", s) == (
        "| model | law: law\\_mc acc (%) | medicine: medicine\\_mc acc (%) | mean win rate (%, 4 columns) |"
    )
    # columns law_mc: rkl > sft > fkl; law_qa: sft = fkl > rkl; medicine_mc: fkl > sft > rkl;
    # medicine_qa: rkl > sft > fkl. Win rates: sft (.5 + .75 + .5 + .5) / 4, fkl (0 + .75 + 1 + 0) / 4,
    # rkl (1 + 0 + 0 + 1) / 4
    assert _line(md, "| sft |", s) == "| sft | 55.0 | 60.0 | **56.2** |"
    assert _line(md, "| rkl |", s) == "| rkl | **65.0** | 50.0 | 50.0 |"
    assert _line(md, "| fkl |", s) == "| fkl | 40.0 | **75.0** | 43.8 |"
    assert _line(md, "| teacher |", s) == "| teacher | 80.0 | 90.0 | – |"
    rows = [line.split(" | ")[0] for line in md[md.index(s) : md.index("## law")].splitlines() if line.startswith("| ")]
    assert rows[1:] == ["| teacher", "| student (before)", "| sft", "| rkl", "| fkl"]  # best win rate first


def test_win_rates_ties_and_single_algorithm_columns():
    rates = win_rates({"a": {"x": 1.0, "y": 1.0, "z": 0.0}, "b": {"x": 0.2, "y": 0.1}, "c": {"x": 5.0}})
    got = dict(zip(rates["algorithm"], rates["win_rate"], strict=False))
    assert got == pytest.approx({"x": (0.75 + 1.0) / 2, "y": (0.75 + 0.0) / 2, "z": 0.0})
    assert dict(zip(rates["algorithm"], rates["columns"], strict=False)) == {"x": 2, "y": 2, "z": 1}


def test_costs_per_row(store):
    md = store[2]["markdown"].read_text()
    cost = "### Cost"
    assert _line(md, "| model |", cost) == (
        "| model | teacher tokens | train tokens | train wall (s) | CPU (s) | "
        "GPU (s) | peak mem (MB) | train tokens/s | eval (s) |"
    )
    assert _line(md, "| sft |", cost) == "| sft | 5,000 | **1,000** | 10.5 | 20.0 | 0 | 900 | 100 | 1.5 |"
    assert _line(md, "| teacher |", cost) == "| teacher | – | – | – | – | – | – | – | 4.0 |"


def test_links_and_provenance(store):
    cfg, made, paths, _ = store
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    for info in made.values():
        exp = info["experiment"]
        for label, rid in info["runs"].items():
            url = f"http://127.0.0.1:5000/#/experiments/{exp}/runs/{rid}"
            assert f"[`{rid}`]({url})" in md, label
            assert f'<a href="{url}"><code>{rid}</code></a>' in page, label
    assert f"mlflow ui --backend-store-uri {tracking.tracking_uri(cfg)} --port 5000" in md
    for text in [
        "pack data hash: `law-hash`",
        "training data hash: `law-data`",
        "teacher: `/models/T`",
        f"code version: `{tracking.code_version()}`",
        "elicitation (teacher data)",
    ]:
        assert text in md


def test_samples_side_by_side_first_five_by_doc_id(store):
    md = store[2]["markdown"].read_text()
    part = md[md.index("## law") : md.index("## medicine")]
    assert [f"#### law\\_qa · law\\_qa-{d:03d}" in part for d in range(7)] == [True] * 5 + [False] * 2
    item = part[part.index("law\\_qa-001") :]
    assert "| teacher | teacher says 1 | rougeL 0.50, exact ✓ |" in item
    assert "| student (before) | before says 1 |" in item and "| sft (seed 0) | sft0 says 1 |" in item


def test_model_text_is_escaped_in_markdown(store):
    md = store[2]["markdown"].read_text()
    assert "<script>" not in md and "**x**" not in md
    assert esc(EVIL) == "&lt;script&gt;alert(1)&lt;/script&gt; \\| \\*\\*x\\*\\*"
    assert f"| rkl (seed 0) | {esc(EVIL)} |" in md
    markdown_it = pytest.importorskip("markdown_it")
    rendered = markdown_it.MarkdownIt("commonmark").enable("table").render(md)
    assert "<script" not in rendered and "<strong>x</strong>" not in rendered
    assert "&lt;script&gt;alert(1)&lt;/script&gt; | **x**" in rendered  # shown as the text it is


def test_model_text_is_escaped_in_html(store):
    page = store[2]["html"].read_text()
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; | **x**" in page


def test_filters(store):
    cfg, _, _, tmp = store
    paths = write_report(cfg, packs=["law"], algorithms=["fkl", "rkl"], out_dir=tmp / "filtered")
    md = paths["markdown"].read_text()
    assert paths["markdown"].name == "law.md" and paths["law.csv"].name == "law.csv"
    assert "## medicine" not in md and "| sft |" not in md and "| rkl |" in md and "| fkl |" in md
    assert "| teacher |" in md and "| student (before) |" in md
    empty = write_report(cfg, since="2999-01-01", out_dir=tmp / "future")["markdown"].read_text()
    assert "No finished kdbench runs match." in empty


def test_clear_errors(store, monkeypatch):
    cfg, _, _, tmp = store
    with pytest.raises(KdbenchError, match=r"unknown pack 'lwa' in --pack \(did you mean 'law'\?\).*law, medicine"):
        write_report(cfg, packs=["lwa"], out_dir=tmp / "x")
    with pytest.raises(KdbenchError, match=r"--since '2026-13-45' is not a date"):
        write_report(cfg, since="2026-13-45", out_dir=tmp / "x")
    with pytest.raises(KdbenchError, match=r"algorithm\(s\) gkd.*found: fkl, rkl, sft"):
        write_report(cfg, algorithms=["gkd"], out_dir=tmp / "x")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    server = load_config(overrides={"pack": "law", "tracking": {"uri": "http://127.0.0.1:9"}})
    with pytest.raises(KdbenchError, match=r"cannot read the MLflow tracking store at http://127.0.0.1:9"):
        write_report(server, out_dir=tmp / "x")
    missing = load_config(overrides={"pack": "law", "home": str(tmp / "nowhere")})
    with pytest.raises(KdbenchError, match="no MLflow database at"):
        write_report(missing, out_dir=tmp / "x")
    assert not (tmp / "nowhere" / "mlflow.db").exists()


def test_cli_report_options(store, capsys):
    cfg, made, _, tmp = store
    out = tmp / "cli"
    rc = main(
        [
            "report",
            "--home",
            cfg.home,
            "--pack",
            "law,medicine",
            "--out",
            str(out),
            "--name",
            "appendix",
            "--mlflow-ui-url",
            "http://mlflow.internal:8080",
            "--since",
            "2020-01-01",
        ]
    )
    assert rc == 0
    assert {p.name for p in out.iterdir()} >= {
        "appendix.md",
        "appendix.html",
        "appendix-gap-closed.png",
        "appendix-cost-law.png",
        "appendix-law.csv",
        "appendix-medicine.csv",
    }
    rid = made["law"]["runs"]["sft/0"]
    assert (
        f"http://mlflow.internal:8080/#/experiments/{made['law']['experiment']}/runs/{rid}"
        in (out / "appendix.md").read_text()
    )
    assert "appendix.html" in capsys.readouterr().out
    assert main(["report", "--home", cfg.home, "--pack", "nope", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "kdbench: error: unknown pack 'nope'" in err and "law, medicine" in err


def test_pack_not_present_here_is_inferred(tmp_path):
    cfg = load_config(overrides={"pack": "law", "home": str(tmp_path / "home")})
    c = tracking.client(cfg)
    exp = tracking.experiment_id(c, cfg, "astro")
    _run(
        c,
        exp,
        "astro",
        "teacher",
        "t",
        {"astro_mc.acc": 0.9, "astro_qa.rougeL": 0.4},
        {"kdbench.teacher": "T"},
        _samples("astro_qa", "teacher"),
    )
    _run(
        c, exp, "astro", "student_before", "b", {"astro_mc.acc": 0.3, "astro_qa.rougeL": 0.1}, {"kdbench.student": "S"}
    )
    _run(
        c,
        exp,
        "astro",
        "student_after",
        "a",
        {"astro_mc.acc": 0.6, "astro_qa.rougeL": 0.2, "astro_mc.acc.gap_closed": 0.5},
        {"kdbench.teacher": "T", "kdbench.student": "S", "kdbench.algorithm": "sft", "kdbench.seed": "0"},
        _samples("astro_qa", "sft"),
    )
    md = write_report(cfg, out_dir=tmp_path / "out")["markdown"].read_text()
    assert "tasks were inferred" in md and "| sft | 60.0 (n=1) | 20.0 (n=1) |" in md
    assert "#### astro\\_qa · astro\\_qa-000" in md


class _Dom(HTMLParser):
    """Tags with their attributes, and the page's text, as Chromium serialised them."""

    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs chromium (make test-deps installs it)")
def test_html_renders_in_headless_chromium(store):
    _, _, paths, tmp = store
    page = paths["html"]
    dom_out = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'chromium-dom'}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    dom = _Dom()
    dom.feed(dom_out)
    tags = [t for t, _ in dom.tags]
    assert tags.count("table") >= 2 * 6 + 1  # per pack: scores, gaps, costs, runs, samples; the summary
    imgs = [a for t, a in dom.tags if t == "img"]
    assert len(imgs) == 3 and all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    assert "script" not in tags and "link" not in tags  # no scripts, nothing loaded from elsewhere
    text = "".join(dom.text)
    assert EVIL in text and "Summary across packs" in text and "Sample generations" in text
    assert dom_out.count('class="r best"') >= 10  # best values are marked
    shot = tmp / "report.png"
    subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp / 'chromium-shot'}",
            f"--screenshot={shot}",
            "--window-size=1400,2000",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1400, 2000)
        colours = im.convert("RGB").resize((140, 200)).getcolors(maxcolors=100000)
    assert len(colours) > 50  # tables and plots were drawn, not a blank page
    if os.environ.get("KDBENCH_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["KDBENCH_KEEP_SCREENSHOT"])
