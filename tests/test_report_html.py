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
from kdbench.report.stats import difference_interval, interval

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
        {"sft": [(0.6, 0.4), (0.6, 0.2)], "fkl": [(0.8, 0.3), (0.7, 0.2)], "rkl": [(0.5, 0.5), (0.5, 0.3)]},
    ),
}
N_MC, N_QA = 40, 30  # items scored per run (the packs hold 208/157 and 209/181: stratified subsets)


def _ones(n: int, *ranges: range) -> list[float]:
    hit = {i for r in ranges for i in r}
    return [1.0 if i in hit else 0.0 for i in range(n)]


_V = [0.1, 0.5] * 15  # law_qa: rougeL per item, mean 0.3
# per-item scores behind SCORES (the mean of each list is the score above), designed so that the paired
# test (seed-averaged differences per item) decides each column in a known way:
# - law_mc: every seed's correct items are nested (the first k), so rkl (65) beats sft (55) on 8 items
#   and loses none: p = 2/2^8 = 0.008, significant; rkl is bold alone.
# - law_qa: fkl's seeds are sft's items +-0.05, the same per item once averaged: a tie (p = 1) between
#   equal means; rkl is 0.1 below on every item (p < 0.001), so sft and fkl are tied best, both bold.
# - medicine_mc: fkl leads (75 vs 60) but loses 4 items to sft, wins 8 and half-wins 4: p = 0.11, not
#   significant, so the maximum is NOT marked alone: fkl and sft are tied best (rkl is significantly below
#   fkl, p = 0.02).
# - medicine_qa: rkl leads (40) over sft (30) and fkl (25), but the items it wins are offset by items it
#   loses (p = 0.47 and 0.28): all tie, nothing marked.
ITEMS = {
    "law": {
        "teacher": (_ones(N_MC, range(32)), [0.3, 0.7] * 15),
        "before": (_ones(N_MC, range(12)), [0.0, 0.2] * 15),
        "sft": [(_ones(N_MC, range(20)), _V), (_ones(N_MC, range(24)), _V)],
        "fkl": [(_ones(N_MC, range(16)), [v + 0.05 for v in _V]), (_ones(N_MC, range(16)), [v - 0.05 for v in _V])],
        "rkl": [(_ones(N_MC, range(28)), [v - 0.1 for v in _V]), (_ones(N_MC, range(24)), [v - 0.1 for v in _V])],
    },
    "medicine": {
        "teacher": (_ones(N_MC, range(36)), _ones(N_QA, range(18))),
        "before": (_ones(N_MC, range(8)), _ones(N_QA)),
        "sft": [
            (_ones(N_MC, range(24)), _ones(N_QA, range(6, 18))),
            (_ones(N_MC, range(24)), _ones(N_QA, range(12, 18))),
        ],
        "fkl": [
            (_ones(N_MC, range(4, 36)), _ones(N_QA, range(12, 21))),
            (_ones(N_MC, range(4, 32)), _ones(N_QA, range(15, 21))),
        ],
        "rkl": [(_ones(N_MC, range(20)), _ones(N_QA, range(15))), (_ones(N_MC, range(20)), _ones(N_QA, range(9)))],
    },
}
# forgetting (law only): two retention tasks outside the pack, 20 items each; (medicine_mc, arc_easy) per seed
N_RET = 20
RETENTION = {
    "before": (0.5, 0.6),
    "sft": [(0.3, 0.6), (0.3, 0.6)],  # mean change -10 pts
    "fkl": [(0.5, 0.6), (0.5, 0.7)],  # +2.5
    "rkl": [(0.2, 0.4), (0.2, 0.4)],  # -25
}
RET_TASKS = ("medicine_mc", "arc_easy")


def _mc(task: str, values: list[float]) -> list[dict]:
    return [{"doc_id": d, "id": f"{task}-{d:03d}", "correct": bool(v)} for d, v in enumerate(values)]


def _samples(qa: str, label: str, evil: bool = False, rouge: list[float] | None = None) -> dict:
    """A generation task's items, logged out of doc_id order; the report shows the first five."""
    rouge = rouge if rouge is not None else [0.5] * 7
    n = len(rouge)
    order = [(7 * i + 6) % n for i in range(n)] if n % 7 else list(reversed(range(n)))
    items = [
        {
            "doc_id": d,
            "id": f"{qa}-{d:03d}",
            "question": f"question {d}?",
            "target": f"answer {d}",
            "prediction": EVIL if evil and d == 0 else f"{label} says {d}",
            "correct": d == 1,
            "rougeL": rouge[d],
        }
        for d in order
    ]
    return {qa: items}


def _retention(values: tuple[float, float]) -> dict:
    """Items of the retention tasks: the first k of 20 correct (nested, as before distillation)."""
    return {t: _mc(t, _ones(N_RET, range(round(v * N_RET)))) for t, v in zip(RET_TASKS, values, strict=True)}


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


def _eval(pack: str, label: str, scores, item_scores, evil: bool = False) -> tuple[dict, dict]:
    """(metrics, samples.json) of one evaluation, the samples consistent with the scores."""
    mc, qa = SCORES[pack][:2]
    mc_items, qa_items = item_scores
    assert sum(mc_items) / len(mc_items) == pytest.approx(scores[0])
    assert sum(qa_items) / len(qa_items) == pytest.approx(scores[1])
    metrics = {f"{mc}.acc": scores[0], f"{qa}.rougeL": scores[1]}
    if pack == "law":  # law logs how many items were scored; medicine's count comes from its samples
        metrics.update({f"{mc}.n": float(N_MC), f"{qa}.n": float(N_QA)})
    return metrics, {mc: _mc(mc, mc_items), **_samples(qa, label, evil, qa_items)}


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
        t_metrics, t_samples = _eval(pack, "teacher", t, ITEMS[pack]["teacher"])
        b_metrics, b_samples = _eval(pack, "before", b, ITEMS[pack]["before"])
        if pack == "law":
            b_metrics.update({f"retention.{rt}.acc": v for rt, v in zip(RET_TASKS, RETENTION["before"], strict=True)})
            b_samples.update(_retention(RETENTION["before"]))
        runs = {
            "teacher": _run(
                c,
                exp,
                pack,
                "teacher",
                f"{pack}/teacher",
                {**t_metrics, "eval.seconds": 4.0},
                {"kdbench.teacher": "/models/T"},
                t_samples,
            ),
            "before": _run(
                c,
                exp,
                pack,
                "student_before",
                f"{pack}/student_before",
                {**b_metrics, "eval.seconds": 2.0},
                {"kdbench.student": "/models/S"},
                b_samples,
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
                scores, samples = _eval(
                    pack, f"{algo}{seed}", (a_mc, a_qa), ITEMS[pack][algo][seed], evil=(algo == "rkl" and seed == 0)
                )
                metrics = {
                    **scores,
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
                if pack == "law":  # what the evaluation logs for forgetting: scores, changes, their mean
                    ret = RETENTION[algo][seed]
                    deltas = [v - v0 for v, v0 in zip(ret, RETENTION["before"], strict=True)]
                    for rt, v, dv in zip(RET_TASKS, ret, deltas, strict=True):
                        metrics[f"retention.{rt}.acc"] = v
                        metrics[f"retention.{rt}.acc.delta"] = dv
                    metrics["retention.mean_delta"] = sum(deltas) / len(deltas)
                    samples.update(_retention(ret))
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
                    c, exp, pack, "student_after", f"{pack}/{algo}/seed{seed}", metrics, tags, samples
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


def _matrix(pack: str, label: str, task: int):
    """[S, N] per-item scores of a row on the pack's mc (0) or qa (1) task, as the store logged them."""
    runs = ITEMS[pack][label]
    return [r[task] for r in (runs if isinstance(runs, list) else [runs])]


def _ci(pack: str, label: str, task: int, bold: bool = False) -> str:
    """The scores table's cell: the logged mean, the bootstrap interval of the row's items, the seeds."""
    mean = SCORES[pack][2 if label == "teacher" else 3][task] if label in ("teacher", "before") else None
    if mean is None:
        mean = sum(seed[task] for seed in SCORES[pack][4][label]) / len(SCORES[pack][4][label])
    m = _matrix(pack, label, task)
    _, lo, hi = interval(m)
    text = f"{100 * mean:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] (n={len(m)})"
    return f"**{text}**" if bold else text


def test_files_written(store):
    _, _, paths, tmp = store
    out = tmp / "out"
    assert paths["markdown"] == out / "leaderboard.md" and paths["html"] == out / "leaderboard.html"
    assert (out / "leaderboard-gap-closed.png").stat().st_size > 5000
    for pack in SCORES:
        assert (out / f"leaderboard-cost-{pack}.png").stat().st_size > 5000
        assert paths[f"{pack}.csv"] == out / f"leaderboard-{pack}.csv"
        assert "sft" in (out / f"leaderboard-{pack}.csv").read_text()
    # forgetting: only law's runs logged retention tasks
    assert paths["forgetting-law.png"] == out / "leaderboard-forgetting-law.png"
    assert (out / "leaderboard-forgetting-law.png").stat().st_size > 5000
    assert "forgetting-medicine.png" not in paths and not (out / "leaderboard-forgetting-medicine.png").exists()
    csv = (out / "leaderboard-law.csv").read_text().splitlines()[0].split(",")
    assert {"law_mc.low", "law_mc.high", "law_mc.best", "retention.arc_easy.mean", "retention.mean_delta"} <= set(csv)


def test_scores_with_intervals_and_significance_marks(store):
    md = store[2]["markdown"].read_text()
    law, med = "## law", "## medicine"
    assert _line(md, "| teacher |", law) == f"| teacher | {_ci('law', 'teacher', 0)} | {_ci('law', 'teacher', 1)} |"
    assert _line(md, "| student (before) |", law) == (
        f"| student (before) | {_ci('law', 'before', 0)} | {_ci('law', 'before', 1)} |"
    )
    assert _ci("law", "teacher", 0) == "80.0 [67.5, 92.5] (n=1)"  # 32 of 40 items right: about +-12.5 pts
    # law_mc: rkl (65) beats sft (55) on 8 items and loses none (p = 2/256): a significant best, bold alone.
    # law_qa: sft and fkl have the same per-item means (p = 1), rkl is below both on every item: a tie for
    # best, both bold
    assert _line(md, "| rkl |", law) == f"| rkl | {_ci('law', 'rkl', 0, True)} | {_ci('law', 'rkl', 1)} |"
    assert _line(md, "| sft |", law) == f"| sft | {_ci('law', 'sft', 0)} | {_ci('law', 'sft', 1, True)} |"
    assert _line(md, "| fkl |", law) == f"| fkl | {_ci('law', 'fkl', 0)} | {_ci('law', 'fkl', 1, True)} |"
    # medicine_mc: the maximum, fkl (75), is NOT significantly better than sft (60; p = 0.13, 4 items lost
    # to it), so it is not marked alone: fkl and sft are tied best (rkl is significantly below fkl).
    # medicine_qa: rkl has the highest mean (40) but no student is significantly below it: all tie, no mark
    assert _line(md, "| fkl |", med) == f"| fkl | {_ci('medicine', 'fkl', 0, True)} | {_ci('medicine', 'fkl', 1)} |"
    assert _line(md, "| sft |", med) == f"| sft | {_ci('medicine', 'sft', 0, True)} | {_ci('medicine', 'sft', 1)} |"
    assert _line(md, "| rkl |", med) == f"| rkl | {_ci('medicine', 'rkl', 0)} | {_ci('medicine', 'rkl', 1)} |"
    # the table notes say which marks are significant, which are ties, and why a column has none
    law_part, med_part = md[md.index(law) : md.index(med)], md[md.index(med) :]
    assert (
        "- law\\_mc acc: rkl is significantly better than every other distilled student "
        "(paired test against each, p ≤ 0.008)." in law_part
    )
    assert "- law\\_qa rougeL: the bold cells are a tie for best: fkl leads, but sft is not significantly" in law_part
    assert (
        "- medicine\\_mc acc: the bold cells are a tie for best: fkl leads, but sft is not significantly " in med_part
    )
    assert "(sft p = 0.128); rkl is (rkl p = 0.019)." in med_part
    assert (
        "- medicine\\_qa rougeL: nothing marked: no distilled student is significantly below the leader rkl" in med_part
    )


def test_method_is_stated(store):
    md, page = store[2]["markdown"].read_text(), store[2]["html"].read_text()
    for text in [
        "95% percentile bootstrap over seeds and items (2,000 replicates",
        "paired sign-flip permutation test over items",
        "exact below 17 differing items, else 20,000 random flips",
        "significant at p &lt; 0.05",
        "fixed seed (0), so the report is reproducible",
    ]:
        assert text in md.split("## Definitions")[1] and text in page, text
    assert "several bold cells in a column are a tie for best" in md


def test_subset_note(store):
    md = store[2]["markdown"].read_text()
    law = md[md.index("## law") : md.index("## medicine")]
    # law's runs log <task>.n (40 and 30 items scored); the pack holds 208 and 157
    assert "- law\\_mc acc: stratified subset of 40 of 208 items." in law
    assert "- law\\_qa rougeL: stratified subset of 30 of 157 items." in law
    # medicine's runs do not: the count is the items in their samples
    assert "- medicine\\_mc acc: stratified subset of 40 of 209 items." in md


def test_forgetting_columns_and_plot(store):
    md, page = store[2]["markdown"].read_text(), store[2]["html"].read_text()
    law, med = md[md.index("## law") : md.index("## medicine")], md[md.index("## medicine") :]
    assert "### Forgetting" in law and "Forgetting" not in med.split("## Definitions")[0]
    head = _line(md, "| model |", "### Forgetting")
    assert head == (
        "| model | arc\\_easy acc score (%) | arc\\_easy acc change (pts) | medicine\\_mc acc score (%) | "
        "medicine\\_mc acc change (pts) | all retention tasks mean change (pts) |"
    )

    def ret(values):
        return [_ones(N_RET, range(round(v * N_RET))) for v in values]

    before = {t: ret([RETENTION["before"][i]]) for i, t in enumerate(RET_TASKS)}
    rkl = {t: ret([seed[i] for seed in RETENTION["rkl"]]) for i, t in enumerate(RET_TASKS)}
    # rkl forgot: 60 -> 40 on arc_easy, 50 -> 20 on medicine_mc, -25 points on average, intervals from the
    # paired bootstrap (items shared with the student before, seeds resampled)
    _, lo, hi = interval(rkl["arc_easy"])
    _, dlo, dhi = difference_interval([[(rkl["arc_easy"], before["arc_easy"])]])
    _, mlo, mhi = difference_interval([[(rkl[t], before[t]) for t in ("arc_easy", "medicine_mc")]])
    line = _line(md, "| rkl |", "### Forgetting")
    assert line.startswith(
        f"| rkl | 40.0 [{100 * lo:.1f}, {100 * hi:.1f}] (n=2) | -20.0 [{100 * dlo:+.1f}, {100 * dhi:+.1f}] |"
    )
    assert line.endswith(f"| -25.0 [{100 * mlo:+.1f}, {100 * mhi:+.1f}] |") and mhi < 0  # significantly forgot
    assert _line(md, "| student (before) |", "### Forgetting").startswith("| student (before) | 60.0 [")
    # the summary: mean change over the retention tasks, per algorithm
    assert _line(md, "| model |", "## Summary across packs").endswith(
        "| forgetting (pts) | mean win rate (%, 4 columns) |"
    )
    assert f"| -25.0 [{100 * mlo:+.1f}, {100 * mhi:+.1f}] |" in _line(md, "| rkl |", "## Summary across packs")
    # the plot, in both formats
    assert "(leaderboard-forgetting-law.png)" in law and "domain gain on law\\_mc acc" in law
    assert page.count("<img ") == 4 and "domain gain on law_mc acc" in page


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
    # marked as in the scores table: rkl is the significant best on law_mc, so its gap is bold (smallest)
    # and so is its gap closed (most); on law_qa sft and fkl are tied best in all four columns
    assert rkl[1] == "**15.0 ± 7.1**" and rkl[2] == "**70.0 ± 14.1**"
    assert [c.startswith("**") for c in sft[1:9]] == [False] * 4 + [True] * 4
    # chance-normalized with the pack's own chance (1 / number of choices of its MC items)
    items = load_pack("law").eval_items["law_mc"]
    chance = sum(1 / len(i.choices) for i in items) / len(items)
    assert rkl[4] == f"**{100 * (0.65 - chance) / (1 - chance):.1f} ± {100 * 0.0707107 / (1 - chance):.1f}**"


def test_summary_and_win_rates_by_hand(store):
    md = store[2]["markdown"].read_text()
    s = "## Summary across packs"
    assert _line(md, "| model |", s) == (
        "| model | law: law\\_mc acc (%) | medicine: medicine\\_mc acc (%) | forgetting (pts) | "
        "mean win rate (%, 4 columns) |"
    )
    # pairwise paired tests per column (a significant win 1, a tie 1/2):
    # law_mc: rkl > sft > fkl, all significant: rkl 1, sft 1/2, fkl 0
    # law_qa: sft = fkl (tie), both > rkl: sft 3/4, fkl 3/4, rkl 0
    # medicine_mc: fkl = sft (p = 0.13), fkl > rkl, sft = rkl (4 items, p = 0.125): fkl 3/4, sft 1/2, rkl 1/4
    # medicine_qa: all tie: 1/2 each
    # sft (.5 + .75 + .5 + .5) / 4 = 56.2, fkl (0 + .75 + .75 + .5) / 4 = 50.0, rkl (1 + 0 + .25 + .5) / 4 = 43.8
    # (the mean-based rule gave sft 56.2, rkl 50.0, fkl 43.8: fkl's medicine_qa and rkl's medicine_qa and
    # medicine_mc "wins" were not significant)
    sft, fkl, rkl = (_line(md, f"| {a} |", s).split(" | ") for a in ("sft", "fkl", "rkl"))
    assert [sft[-1], fkl[-1], rkl[-1]] == ["**56.2** |", "50.0 |", "43.8 |"]
    # headline columns, marked as in the packs' tables: rkl significantly best on law_mc; fkl and sft tied
    # best on medicine_mc (the maximum, fkl, is not significantly better than sft)
    assert rkl[1] == _ci("law", "rkl", 0, True) and sft[1] == _ci("law", "sft", 0)
    assert fkl[2] == _ci("medicine", "fkl", 0, True) and sft[2] == _ci("medicine", "sft", 0, True)
    assert rkl[2] == _ci("medicine", "rkl", 0)
    assert _line(md, "| teacher |", s) == (
        f"| teacher | {_ci('law', 'teacher', 0)} | {_ci('medicine', 'teacher', 0)} | – | – |"
    )
    assert "- medicine: medicine\\_mc acc: the bold cells are a tie for best" in md
    rows = [line.split(" | ")[0] for line in md[md.index(s) : md.index("## law")].splitlines() if line.startswith("| ")]
    assert rows[1:] == ["| teacher", "| student (before)", "| sft", "| fkl", "| rkl"]  # best win rate first


def test_win_rates_ties_and_single_algorithm_columns():
    # no per-item samples: means decide (a higher mean wins, equal means tie)
    rates = win_rates({"a": {"x": 1.0, "y": 1.0, "z": 0.0}, "b": {"x": 0.2, "y": 0.1}, "c": {"x": 5.0}})
    got = dict(zip(rates["algorithm"], rates["win_rate"], strict=False))
    assert got == pytest.approx({"x": (0.75 + 1.0) / 2, "y": (0.75 + 0.0) / 2, "z": 0.0})
    assert dict(zip(rates["algorithm"], rates["columns"], strict=False)) == {"x": 2, "y": 2, "z": 1}


def test_win_rates_count_a_non_significant_difference_as_a_tie():
    import numpy as np

    # column a: x is above y on the mean but only on 2 items of 12 (p = 0.5): a tie, 1/2 each; z loses
    # to both on every item (significant). Column b has no per-item samples: its means decide
    x, y, z = np.ones((2, 12)), np.ones((2, 12)), np.zeros((2, 12))
    y[:, :2] = 0.0
    columns = {"a": {"x": 1.0, "y": 10 / 12, "z": 0.0}, "b": {"x": 0.2, "y": 0.1}}
    rates = win_rates(columns, {"a": {"x": x, "y": y, "z": z}})
    got = dict(zip(rates["algorithm"], rates["win_rate"], strict=False))
    assert got == pytest.approx({"x": (0.75 + 1.0) / 2, "y": (0.75 + 0.0) / 2, "z": 0.0})
    # by the means alone x would have won column a outright
    assert dict(zip(*win_rates(columns)[["algorithm", "win_rate"]].T.values, strict=False))["x"] == 1.0


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
    assert "| teacher | teacher says 1 | rougeL 0.70, exact ✓ |" in item
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
    (tmp / "folder-home" / "mlflow.db").mkdir(parents=True)
    folder = load_config(overrides={"pack": "law", "home": str(tmp / "folder-home")})
    with pytest.raises(KdbenchError, match=r"mlflow.db .* is a folder, where the MLflow SQLite database should be"):
        write_report(folder, out_dir=tmp / "x")


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
        _samples("astro_qa", "teacher", rouge=[0.4] * 7),
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
        _samples("astro_qa", "sft", rouge=[0.2] * 7),
    )
    md = write_report(cfg, out_dir=tmp_path / "out")["markdown"].read_text()
    # astro_mc: no per-item samples, no interval; astro_qa: every item 0.2, nothing varies
    assert "tasks were inferred" in md and "| sft | 60.0 [–] (n=1) | 20.0 [20.0, 20.0] (n=1) |" in md
    assert "stratified subset of" not in md  # the pack is not here: how many items it holds is unknown
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
    assert len(imgs) == 4 and all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    assert "script" not in tags and "link" not in tags  # no scripts, nothing loaded from elsewhere
    text = "".join(dom.text)
    assert EVIL in text and "Summary across packs" in text and "Sample generations" in text
    assert dom_out.count('class="r best"') >= 10  # best values are marked
    assert "Forgetting" in text and "stratified subset of 40 of 208 items" in text
    assert _ci("law", "rkl", 0) in text and "the bold cells are a tie for best" in text  # intervals and ties
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
