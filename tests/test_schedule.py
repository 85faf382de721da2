"""Scheduling for real: a Prefect server and an MLflow server on 127.0.0.1, the law
deployment served by `kdbench schedule`, a run triggered through the Prefect API,
and its results read back from the MLflow server."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdbench.errors import ConfigError
from kdbench.schedule import read_deployments, require_server, runner_deployments
from tests.servers import prefect_and_mlflow

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_prefect_yaml_has_a_deployment_per_vertical_and_the_benchmark():
    names = {d["name"]: d for d in read_deployments()}
    assert {"law", "medicine", "finance", "science", "benchmark"} <= set(names)
    for n in ("law", "medicine", "finance", "science"):
        assert names[n]["parameters"]["config"]["pack"] == n and names[n]["schedules"][0]["cron"]
    assert names["benchmark"]["parameters"]["packs"] == ["law", "medicine", "finance", "science"]
    deps = runner_deployments(["law", "benchmark"], overrides={"eval": {"limit": 5}})
    assert [d.name for d in deps] == ["law", "benchmark"]
    assert deps[0].parameters["config"] == {"pack": "law", "eval": {"limit": 5}}
    with pytest.raises(ConfigError, match="unknown deployment 'lawz' \\(did you mean 'law'\\?\\)"):
        runner_deployments(["lawz"])


def test_schedule_refuses_without_a_server(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}):
        with pytest.raises(ConfigError, match="schedules need a Prefect server"):
            require_server()


@pytest.fixture
def servers(tmp_path):
    with prefect_and_mlflow(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}") as (env, logs, procs):
        yield env, logs, procs


def test_served_deployment_runs_and_lands_in_the_mlflow_server(servers, tmp_path):
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client

    env, logs, procs = servers
    tiny = [
        "--set",
        "tiny.vocab_size=800",
        "--set",
        "tiny.teacher_epochs=2",
        "--set",
        "tiny.student_epochs=0",
        "--set",
        "tiny.general_packs=[]",
        "--set",
        "tiny.teacher={hidden_size: 64, num_layers: 2, num_heads: 2, intermediate_size: 128}",
        "--set",
        "tiny.student={hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64}",
        "--set",
        "elicit.limit=24",
        "--set",
        "eval.limit=12",
        "--set",
        "distill.algorithms=[sft]",
        "--set",
        "distill.seeds=[0]",
        "--set",
        "distill.train.epochs=1",
        "--set",
        f"home={tmp_path / 'home'}",
        "--set",
        f"report_dir={tmp_path / 'reports'}",
    ]
    serve = subprocess.Popen(
        [str(BIN / "kdbench"), "schedule", "--only", "law", *tiny],
        env=env,
        cwd=REPO,
        stdout=logs["serve"].open("w"),
        stderr=subprocess.STDOUT,
    )
    procs.append(serve)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            deadline, deployment = time.time() + 180, None
            while deployment is None and time.time() < deadline:
                if serve.poll() is not None:
                    pytest.fail(f"kdbench schedule exited:\n{logs['serve'].read_text()[-3000:]}")
                try:
                    deployment = client.read_deployment_by_name("kdbench-domain/law")
                except Exception:
                    time.sleep(1)
            assert deployment is not None, logs["serve"].read_text()[-3000:]
            assert deployment.schedules and deployment.schedules[0].schedule.cron == "0 1 * * *"
            run = client.create_flow_run_from_deployment(deployment.id)
            deadline = time.time() + 900
            while time.time() < deadline:
                state = client.read_flow_run(run.id).state
                if state is not None and state.is_final():
                    break
                time.sleep(3)
            assert state is not None and state.is_completed(), (state, logs["serve"].read_text()[-4000:])
    c = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = c.get_experiment_by_name("kdbench-law")
    runs = c.search_runs([exp.experiment_id])
    roles = sorted(r.data.tags["kdbench.role"] for r in runs)
    assert roles == ["elicitation", "student_after", "student_before", "teacher"]
    assert all(r.info.status == "FINISHED" for r in runs)
    after = next(r for r in runs if r.data.tags["kdbench.role"] == "student_after")
    assert "law_mc.acc" in after.data.metrics and "law_mc.acc.gap" in after.data.metrics
    assert {a.path for a in c.list_artifacts(after.info.run_id)} >= {"config.yaml", "samples.json"}
