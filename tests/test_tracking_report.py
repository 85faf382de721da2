"""MLflow runs keyed by content (no duplicates, no orphans), gap metrics, the leaderboard."""

import math

import numpy as np
import pytest

from kdbench import tracking
from kdbench.config import load_config
from kdbench.errors import NonFiniteLossError
from kdbench.metrics import all_gaps, chance_normalized, gap_metrics
from kdbench.report import write_report
from kdbench.report.stats import interval


@pytest.fixture
def cfg(tmp_path):
    return load_config(overrides={"pack": "law", "home": str(tmp_path / "home"), "report_dir": str(tmp_path / "rep")})


def test_gap_metrics():
    g = gap_metrics(teacher=0.8, before=0.3, after=0.5)
    assert g["gap"] == pytest.approx(0.3) and g["gap_closed"] == pytest.approx(0.4)
    assert g["retention"] == pytest.approx(0.625)
    assert "gap_closed" not in gap_metrics(0.5, 0.5, 0.6)  # undefined, not infinite
    assert chance_normalized(0.25, 0.25) == 0 and chance_normalized(1.0, 0.25) == 1
    gaps = all_gaps({"t": {"acc": 0.8, "acc_stderr": 0.1}}, {"t": {"acc": 0.3}}, {"t": {"acc": 0.5, "n": 9}})
    assert set(gaps) == {"t.acc.gap", "t.acc.gap_closed", "t.acc.retention"}


def test_run_key_resumes_instead_of_duplicating(cfg):
    c = tracking.client(cfg)
    exp = tracking.experiment_id(c, cfg, "law")
    assert tracking.experiment_id(c, cfg, "law") == exp
    # a run killed mid-way (SIGKILL) is left RUNNING ...
    killed = c.create_run(exp, tags={"kdbench.run_key": "k1"}).info.run_id
    # ... the rerun with the same key picks it up and finishes it
    with tracking.tracked_run(c, exp, "k1", "x", {}) as run_id:
        tracking.log_all(c, run_id, metrics={"m": 1.0}, params={"a": 1})
    assert run_id == killed
    r = c.get_run(killed)
    assert r.info.status == "FINISHED" and r.data.tags["kdbench.resumed"] == "1"
    with tracking.tracked_run(c, exp, "k1", "x", {}) as again:
        tracking.log_all(c, again, params={"a": 1})  # logging the same params twice is fine
    assert again == killed and len(c.search_runs([exp])) == 1
    assert c.get_run(killed).data.tags["kdbench.resumed"] == "1"  # reopening a finished run resumes nothing


def test_failure_marks_run_failed_with_step(cfg):
    c = tracking.client(cfg)
    exp = tracking.experiment_id(c, cfg, "law")
    with pytest.raises(NonFiniteLossError):
        with tracking.tracked_run(c, exp, "k2", "y", {}) as run_id:
            raise NonFiniteLossError(17, float("nan"), "/ckpt")
    r = c.get_run(run_id)
    assert r.info.status == "FAILED" and r.data.tags["kdbench.failed_step"] == "17"
    assert r.data.tags["kdbench.last_checkpoint"] == "/ckpt" and "step 17" in r.data.tags["kdbench.error"]


def _fake_run(c, exp, role, acc, items=None, logged_n=None, **tags):
    """A run scoring acc on law_mc and acc / 2 on law_qa; with items, a samples.json consistent with both:
    the first acc * items of law_mc's items right (nested across runs), every law_qa item at acc / 2."""
    from kdbench.data import content_hash

    with tracking.tracked_run(
        c,
        exp,
        content_hash(role, acc, tags),
        role,
        {"kdbench.pack": "law", "kdbench.role": role, **{f"kdbench.{k}": v for k, v in tags.items()}},
    ) as rid:
        m = {"law_mc.acc": acc, "law_qa.rougeL": acc / 2}
        if logged_n:
            m["law_mc.n"] = logged_n
        if role == "student_after":
            m.update({f"law_mc.acc.{k}": v for k, v in gap_metrics(0.8, 0.3, acc).items()})
            m["cost.train_tokens"] = 1000
        tracking.log_all(c, rid, metrics=m)
        if items:
            c.log_dict(rid, _samples(acc, items), "samples.json")


def _samples(acc: float, items: int) -> dict:
    k = round(acc * items)
    assert k == acc * items, "the samples must give the logged score"
    return {
        "law_mc": [{"doc_id": d, "id": f"mc-{d:03d}", "correct": d < k} for d in range(items)],
        "law_qa": [{"doc_id": d, "id": f"qa-{d:03d}", "correct": False, "rougeL": acc / 2} for d in range(items)],
    }


def _cell(accs: list[float], items: int, bold: bool = False) -> str:
    m = np.array([[1.0 if d < round(a * items) else 0.0 for d in range(items)] for a in accs])
    _, lo, hi = interval(m)
    text = f"{100 * np.mean(accs):.1f} [{100 * lo:.1f}, {100 * hi:.1f}] (n={len(accs)})"
    return f"**{text}**" if bold else text


def _store(cfg, items=None, logged_n=None):
    c = tracking.client(cfg)
    exp = tracking.experiment_id(c, cfg, "law")
    _fake_run(c, exp, "teacher", 0.8, items, logged_n, teacher="T")
    _fake_run(c, exp, "student_before", 0.3, items, logged_n, student="S")
    for algo, accs in ACCS.items():
        for seed, acc in enumerate(accs):
            _fake_run(
                c, exp, "student_after", acc, items, logged_n, teacher="T", student="S", algorithm=algo, seed=str(seed)
            )


ACCS = {"sft": [0.5, 0.6], "fkl": [0.4, 0.4]}


def _row(md: str, start: str, after: str = "### Scores") -> str:
    return next(line for line in md[md.index(after) :].splitlines() if line.startswith(start))


def test_leaderboard_aggregates_seeds_and_marks_a_significant_best(cfg):
    # 40 items: sft's seeds get 20 and 24 right, fkl's 16 and 16, the first ones each time; sft wins 8 items
    # and loses none (p = 2/2^8 = 0.008): significantly better, bold alone
    _store(cfg, items=40)
    paths = write_report(cfg, packs=["law"])
    md = paths["markdown"].read_text()
    assert _row(md, "| teacher |") == f"| teacher | {_cell([0.8], 40)} | 40.0 [40.0, 40.0] (n=1) |"
    assert _row(md, "| sft |").startswith(f"| sft | {_cell(ACCS['sft'], 40, bold=True)} | **")
    assert _row(md, "| fkl |").startswith(f"| fkl | {_cell(ACCS['fkl'], 40)} | ")
    assert _cell(ACCS["sft"], 40) == "55.0 [37.5, 72.5] (n=2)"  # about +-15 pts from 40 items, +-2.5 from 2 seeds
    gaps = md[md.index("### Gap to the teacher") :]
    sft = next(line for line in gaps.splitlines() if line.startswith("| sft"))
    assert sft.split(" | ")[2] == "**50.0 ± 14.1**"  # gap closed: per seed (0.5 - 0.3) / (0.8 - 0.3), (0.6 - 0.3) / 0.5
    assert "law\\_mc acc: sft is significantly better than every other distilled student" in md
    # the runs did not log law_mc.n: the 40 items in their samples are the subset scored
    assert "- law\\_mc acc: stratified subset of 40 of 208 items." in md
    csv = paths["law.csv"].read_text()
    assert (
        "law_mc.mean" in csv
        and "law_mc.low" in csv
        and math.isfinite(float(csv.splitlines()[1].split(",")[0] != "" or 1))
    )


def test_a_column_where_every_student_ties_has_no_mark(cfg):
    # the same scores on 20 items: sft wins only 4 items (p = 2/2^4 = 0.125). The maximum, sft's 55, is not
    # significantly better than fkl's 40 and they are the only two students: all tie, nothing is bold
    # (the old rule bolded the maximum)
    _store(cfg, items=20, logged_n=20)
    md = write_report(cfg, packs=["law"])["markdown"].read_text()
    assert _row(md, "| sft |").startswith(f"| sft | {_cell(ACCS['sft'], 20)} | ")
    assert _row(md, "| fkl |").startswith(f"| fkl | {_cell(ACCS['fkl'], 20)} | ")
    assert (
        "law\\_mc acc: nothing marked: no distilled student is significantly below the leader sft "
        "(fkl p = 0.125), so all tie." in md
    )
    gaps = md[md.index("### Gap to the teacher") :]
    assert "**" not in next(line for line in gaps.splitlines() if line.startswith("| sft")).split(" | ")[2]
    # law_qa (acc / 2 on every item) still separates them: sft is above fkl on all 20 items
    assert _row(md, "| sft |").endswith(" (n=2)** |")
    assert "stratified subset of 20 of 208 items" in md  # logged law_mc.n


def test_runs_without_samples_have_no_interval_and_no_marks(cfg):
    _store(cfg, logged_n=208)  # every item of the pack scored, but no samples.json
    md = write_report(cfg, packs=["law"])["markdown"].read_text()
    assert _row(md, "| sft |") == "| sft | 55.0 [–] (n=2) | 27.5 [–] (n=2) |"
    assert _row(md, "| teacher |") == "| teacher | 80.0 [–] (n=1) | 40.0 [–] (n=1) |"
    assert (
        "law\\_mc acc: no per-item samples for teacher, student before, fkl and sft, so no interval there "
        "and no significance marks in this column." in md
    )
    assert "stratified subset of" not in md  # all 208 items were scored
    # no retention metrics anywhere: no forgetting table, column or plot
    assert "Forgetting" not in md and "forgetting (pts)" not in md and "forgetting-law.png" not in md
    # the win rate falls back to the means, and says so
    assert (
        "a column compares means instead (the higher mean wins, equal means tie): law: law\\_mc acc; law: law\\_qa"
        in md
    )


def test_report_escapes_markdown(cfg):
    c = tracking.client(cfg)
    exp = tracking.experiment_id(c, cfg, "law")
    _fake_run(c, exp, "teacher", 0.8, teacher="T")
    _fake_run(c, exp, "student_before", 0.3, student="S")
    _fake_run(c, exp, "student_after", 0.5, teacher="T", student="S", algorithm="x|<b>y</b>", seed="0")
    md = write_report(cfg, packs=["law"])["markdown"].read_text()
    assert "<b>" not in md and "x\\|&lt;b&gt;y&lt;/b&gt;" in md
