"""MLflow runs keyed by content (no duplicates, no orphans), gap metrics, the leaderboard."""

import math

import pytest

from kdbench import tracking
from kdbench.config import load_config
from kdbench.errors import NonFiniteLossError
from kdbench.metrics import all_gaps, chance_normalized, gap_metrics
from kdbench.report import write_report


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


def _fake_run(c, exp, role, acc, **tags):
    from kdbench.data import content_hash

    with tracking.tracked_run(
        c,
        exp,
        content_hash(role, acc, tags),
        role,
        {"kdbench.pack": "law", "kdbench.role": role, **{f"kdbench.{k}": v for k, v in tags.items()}},
    ) as rid:
        m = {"law_mc.acc": acc, "law_qa.rougeL": acc / 2}
        if role == "student_after":
            m.update({f"law_mc.acc.{k}": v for k, v in gap_metrics(0.8, 0.3, acc).items()})
            m["cost.train_tokens"] = 1000
        tracking.log_all(c, rid, metrics=m)


def test_leaderboard_aggregates_seeds_and_marks_best(cfg):
    c = tracking.client(cfg)
    exp = tracking.experiment_id(c, cfg, "law")
    _fake_run(c, exp, "teacher", 0.8, teacher="T")
    _fake_run(c, exp, "student_before", 0.3, student="S")
    for algo, accs in {"sft": [0.5, 0.6], "fkl": [0.4, 0.4]}.items():
        for seed, acc in enumerate(accs):
            _fake_run(c, exp, "student_after", acc, teacher="T", student="S", algorithm=algo, seed=str(seed))
    paths = write_report(cfg, packs=["law"])
    md = paths["markdown"].read_text()
    assert "| teacher | 80.0 (n=1)" in md
    assert "| sft | **55.0 ± 7.1 (n=2)** |" in md and "| fkl | 40.0 ± 0.0 (n=2) |" in md
    gaps = md[md.index("### Gap to the teacher") :]
    sft = next(line for line in gaps.splitlines() if line.startswith("| sft"))
    assert sft.split(" | ")[2] == "**50.0 ± 14.1**"  # gap closed: per seed (0.5 - 0.3) / (0.8 - 0.3), (0.6 - 0.3) / 0.5
    csv = paths["law.csv"].read_text()
    assert "law_mc.mean" in csv and math.isfinite(float(csv.splitlines()[1].split(",")[0] != "" or 1))


def test_report_escapes_markdown(cfg):
    c = tracking.client(cfg)
    exp = tracking.experiment_id(c, cfg, "law")
    _fake_run(c, exp, "teacher", 0.8, teacher="T")
    _fake_run(c, exp, "student_before", 0.3, student="S")
    _fake_run(c, exp, "student_after", 0.5, teacher="T", student="S", algorithm="x|<b>y</b>", seed="0")
    md = write_report(cfg, packs=["law"])["markdown"].read_text()
    assert "<b>" not in md and "x\\|&lt;b&gt;y&lt;/b&gt;" in md
