"""The domain flow end to end on a tiny configuration, under prefect_test_harness:
real tiny models, real lm-eval, real MLflow (SQLite), real Prefect caching."""

import pytest
from mlflow.tracking import MlflowClient

from kdbench.config import load_config

pytestmark = pytest.mark.slow

TINY = {
    "tiny": {
        "vocab_size": 1024,
        "teacher_epochs": 4,
        "student_epochs": 0.5,  # the default's pretrained student (medicine, finance, science), briefly
        "teacher": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128},
        "student": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
    },
    "elicit": {"limit": 40, "max_new_tokens": 24},
    "eval": {"limit": 16, "max_gen_toks": 16},
    "distill": {"algorithms": ["sft", "fkl"], "seeds": [0, 1], "train": {"epochs": 1, "save_every": 3}},
}


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    import os

    from prefect.testing.utilities import prefect_test_harness

    tmp = tmp_path_factory.mktemp("flow")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(tmp / "prefect-results")
    cfg = load_config(overrides={"pack": "law", "home": str(tmp / "home"), "report_dir": str(tmp / "reports"), **TINY})
    from flows.domain import domain_flow

    with prefect_test_harness(server_startup_timeout=180):
        first = domain_flow(cfg.model_dump(mode="json"))
        second = domain_flow(cfg.model_dump(mode="json"))
        logs = _prefect_logs()
    return cfg, first, second, logs


def _prefect_logs() -> list:
    """Every log record the Prefect server holds (after the API handler has sent what it buffered)."""
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the worker that ships records is shared: any handler flushes it
    with get_client(sync_client=True) as client:
        out, offset = [], 0
        while batch := client.read_logs(limit=200, offset=offset):
            out += batch
            offset += len(batch)
    return out


def _runs(cfg):
    from kdbench import tracking

    c = MlflowClient(tracking.tracking_uri(cfg))
    exp = c.get_experiment_by_name("kdbench-law")
    assert exp is not None, "one experiment per pack"
    return c, c.search_runs([exp.experiment_id], max_results=100)


def test_mlflow_holds_one_run_per_result(flow_run):
    cfg, first, _, _ = flow_run
    c, runs = _runs(cfg)
    roles = sorted(r.data.tags["kdbench.role"] for r in runs)
    assert roles == [
        "elicitation",
        "student_after",
        "student_after",
        "student_after",
        "student_after",
        "student_before",
        "teacher",
    ]
    assert all(r.info.status == "FINISHED" for r in runs)
    after = [r for r in runs if r.data.tags["kdbench.role"] == "student_after"]
    assert sorted((r.data.tags["kdbench.algorithm"], r.data.tags["kdbench.seed"]) for r in after) == [
        ("fkl", "0"),
        ("fkl", "1"),
        ("sft", "0"),
        ("sft", "1"),
    ]
    for r in after:
        tags, m, p = r.data.tags, r.data.metrics, r.data.params
        for t in ("kdbench.pack", "kdbench.teacher", "kdbench.student", "kdbench.data_hash", "kdbench.code_version"):
            assert tags[t], t
        for name in (
            "law_mc.acc",
            "law_mc.acc_norm",
            "law_qa.rougeL",
            "law_qa.exact_match",
            "law_mc.acc.gap",
            "law_mc.acc.retention",
            "cost.train_tokens",
            "cost.peak_mem_mb",
        ):
            assert name in m, name
        assert p["algorithm"] == tags["kdbench.algorithm"] and int(p["seed"]) == int(tags["kdbench.seed"])
        artifacts = {a.path for a in c.list_artifacts(r.info.run_id)}
        assert {"config.yaml", "samples.json", "dataset_manifest.json"} <= artifacts
        history = c.get_metric_history(r.info.run_id, "train.loss")
        assert len(history) >= 1
    teacher = next(r for r in runs if r.data.tags["kdbench.role"] == "teacher")
    before = next(r for r in runs if r.data.tags["kdbench.role"] == "student_before")
    for r in after:  # the gap metrics are computed from the tracked baselines
        t, b, a = (x.data.metrics["law_mc.acc"] for x in (teacher, before, r))
        assert r.data.metrics["law_mc.acc.gap"] == pytest.approx(t - a)
        if t != b:
            assert r.data.metrics["law_mc.acc.gap_closed"] == pytest.approx((a - b) / (t - b))
    elicit = next(r for r in runs if r.data.tags["kdbench.role"] == "elicitation")
    assert elicit.data.metrics["labeling.requests"] == 40
    assert "decontam.rate" in elicit.data.metrics
    logged = {a.path for a in c.list_artifacts(elicit.info.run_id)}
    assert {"elicitation_stats.json", "elicitation_examples.json", "dataset_manifest.json"} <= logged


def test_rerun_reuses_everything_and_duplicates_nothing(flow_run):
    cfg, first, second, _ = flow_run
    _, runs = _runs(cfg)
    assert len(runs) == 7
    assert [r["metrics"] for r in first["results"]] == [r["metrics"] for r in second["results"]]
    assert first["teacher"] == second["teacher"]


def test_report_written_with_every_row(flow_run):
    cfg, first, _, _ = flow_run
    md = open(first["report"]["markdown"]).read()
    assert "| teacher |" in md and "| student (before) |" in md
    assert "| sft |" in md and "| fkl |" in md and "(n=2)" in md


def test_kdbench_logs_reach_the_prefect_run(flow_run):
    """What kdbench says inside a flow is in the flow run's logs (and its tasks'), where the Prefect UI shows it."""
    _, _, _, logs = flow_run
    ours = [lg for lg in logs if lg.name.startswith("kdbench")]
    assert any("submitting models" in lg.message and lg.flow_run_id for lg in ours)  # the flow's own words
    assert any("evaluating" in lg.message and lg.task_run_id for lg in ours)  # said inside a task run
    assert any("leaderboard:" in lg.message for lg in ours)
