"""A team's set-up for real, on this machine: PostgreSQL (Debian's package) under an MLflow server, a Prefect
server, a process work pool with the deployments of prefect.yaml, and two workers, each its own process with its
own kdbench home (as two GPU machines would be).

- a benchmark run with two students training at once tracks into MLflow on PostgreSQL; the report is built from it
- two workers share two packs' runs; every result lands once in the one MLflow server
- a worker SIGKILLed mid-run: heartbeats stop, kdbench's automations mark the run Crashed and schedule it again,
  the other worker finishes it, and MLflow ends with no RUNNING and no duplicated runs
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.servers import free_port, prefect_and_mlflow

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MICRO = {
    "tiny": {
        "vocab_size": 800,
        "teacher_epochs": 2,
        "student_epochs": 0,
        "general_packs": [],
        "teacher": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128},
        "student": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
    },
    "elicit": {"limit": 24},
    "eval": {"limit": 12},
    "distill": {"algorithms": ["sft"], "seeds": [0], "train": {"epochs": 1}},
}


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed: `apt-get install -y postgresql` (make test-deps does it)")
    return Path(found[-1]).parent


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (as the postgres user when run as root: it refuses root)."""
    pg = _pg_bin()
    data = Path(tempfile.mkdtemp(prefix="kdbench-pg-"))  # outside pytest's 0700 tmp: the postgres user reads it
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    subprocess.run(
        [*as_user, str(pg / "initdb"), "-D", str(data / "db"), "--auth=trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [*as_user, str(pg / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-o", opts, "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow", pg, port
    finally:
        subprocess.run(
            [*as_user, str(pg / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def team(postgres, tmp_path_factory):
    """A Prefect server and an MLflow server on PostgreSQL; yields (env, tmp, procs)."""
    tmp = tmp_path_factory.mktemp("team")
    extra = {"PREFECT_WORKER_QUERY_SECONDS": "2", "KDBENCH_REPO": str(REPO)}
    with prefect_and_mlflow(tmp, postgres[0], extra, mlflow_workers=2) as (env, _, procs):
        yield env, tmp, procs


def _roles(client, pack: str) -> list[str]:
    exp = client.get_experiment_by_name(f"kdbench-{pack}")
    assert exp is not None, f"no experiment for {pack}"
    return sorted(r.data.tags["kdbench.role"] for r in client.search_runs([exp.experiment_id]))


def _statuses(client) -> set[str]:
    out = set()
    for exp in client.search_experiments():
        out |= {r.info.status for r in client.search_runs([exp.experiment_id])}
    return out


def test_benchmark_run_tracks_into_mlflow_on_postgresql(team, postgres, tmp_path):
    """Two students (sft and fkl) train at once (two slots) and track into the server; the report reads it."""
    from mlflow.tracking import MlflowClient

    env, _, _ = team
    uri, pg, port = postgres
    config = {**MICRO, "distill": {**MICRO["distill"], "algorithms": ["sft", "fkl"]}}
    config |= {"orchestration": {"gpu_slots": 2}, "home": str(tmp_path / "home"), "report_dir": str(tmp_path / "r")}
    (tmp_path / "run.yaml").write_text(json.dumps(config))
    run_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}  # Prefect's local mode; MLflow the server
    out = subprocess.run(
        [str(BIN / "kdbench"), "run", "law", "--config", str(tmp_path / "run.yaml")],
        env=run_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    c = MlflowClient(env["MLFLOW_TRACKING_URI"])
    assert _roles(c, "law") == ["elicitation", "student_after", "student_after", "student_before", "teacher"]
    assert _statuses(c) == {"FINISHED"}
    # the runs are rows of PostgreSQL's `runs` table, not a file somewhere
    rows = subprocess.run(
        [
            str(pg / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "-d",
            "mlflow",
            "-Atc",
            "select count(*) from runs where status = 'FINISHED'",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(rows.stdout.strip()) == 5
    rep = subprocess.run(
        [
            str(BIN / "kdbench"),
            "report",
            "--pack",
            "law",
            "--tracking-uri",
            env["MLFLOW_TRACKING_URI"],
            "--out",
            str(tmp_path / "report"),
        ],
        env=run_env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert rep.returncode == 0, rep.stdout[-2000:] + rep.stderr[-2000:]
    board = (tmp_path / "report" / "law.md").read_text()
    assert "sft" in board and "fkl" in board


def _deploy(env, tmp: Path, packs: list[str]) -> None:
    """prefect.yaml's deployments of ``packs`` into the kdbench pool, each with the micro config as parameters."""
    subprocess.run(
        [str(BIN / "prefect"), "work-pool", "create", "kdbench", "--type", "process", "--overwrite"],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    for pack in packs:
        params = json.dumps({"config": {**MICRO, "pack": pack, "report_dir": str(tmp / "reports")}})
        out = subprocess.run(
            [str(BIN / "prefect"), "--no-prompt", "deploy", "--name", pack, "--params", params],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def _worker(env, tmp: Path, name: str) -> subprocess.Popen:
    """A worker process (its own session, so a SIGKILL of its group takes its flow runs too) with its own home."""
    wenv = {**env, "KDBENCH_HOME": str(tmp / f"home-{name}")}
    log = (tmp / f"worker-{name}.log").open("a")
    return subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", "kdbench", "--name", name, "--limit", "1"],
        env=wenv,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_final(client, run_id, seconds: float, logs: list[Path]):
    deadline = time.time() + seconds
    while time.time() < deadline:
        state = client.read_flow_run(run_id).state
        if state is not None and state.is_final():
            return state
        time.sleep(3)
    pytest.fail(f"flow run not final after {seconds} s:\n" + "\n".join(p.read_text()[-2000:] for p in logs))


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a worker and every process under it, as a dead machine would (its flow runs may be in sessions of
    their own, out of reach of a signal to the worker's process group)."""
    import psutil

    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(tree[1:], timeout=30)


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def test_two_workers_share_two_packs_and_results_land_once(team):
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env, tmp, _ = team
    _deploy(env, tmp, ["medicine", "finance"])  # packs no other test of this module runs
    workers = [_worker(env, tmp, "a"), _worker(env, tmp, "b")]
    logs = [tmp / "worker-a.log", tmp / "worker-b.log"]
    try:
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
            with get_client(sync_client=True) as client:
                runs = [
                    client.create_flow_run_from_deployment(client.read_deployment_by_name(f"kdbench-domain/{p}").id)
                    for p in ("medicine", "finance")
                ]
                states = [_wait_final(client, r.id, 900, logs) for r in runs]
                assert all(s.is_completed() for s in states), [s.message for s in states]
    finally:
        _stop(*workers)
    # each worker ran one pack: its home holds that pack's students and not the other's
    ran = {w: sorted({p.name.split("-")[0] for p in (tmp / f"home-{w}" / "students").glob("*")}) for w in "ab"}
    assert sorted(ran["a"] + ran["b"]) == ["finance", "medicine"], ran
    c = MlflowClient(env["MLFLOW_TRACKING_URI"])
    for pack in ("medicine", "finance"):
        assert _roles(c, pack) == ["elicitation", "student_after", "student_before", "teacher"]
    assert "RUNNING" not in _statuses(c)


def test_a_dead_workers_run_is_crashed_and_finished_by_the_other(team):
    """SIGKILL worker a (and its flow run) mid-run; the run ends Crashed, is scheduled again, worker b finishes it."""
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env, tmp, _ = team
    _deploy(env, tmp, [])  # the pool
    out = subprocess.run([str(BIN / "kdbench"), "automations"], env=env, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # science, with longer training so the kill lands mid-run
    slow = {**MICRO, "distill": {**MICRO["distill"], "train": {"epochs": 400, "save_every": 50}}}
    params = json.dumps({"config": {**slow, "pack": "science", "report_dir": str(tmp / "reports")}})
    subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "science", "--params", params],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    a = _worker(env, tmp, "dead")
    logs = [tmp / "worker-dead.log", tmp / "worker-alive.log"]
    b = None
    c = MlflowClient(env["MLFLOW_TRACKING_URI"])
    try:
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
            with get_client(sync_client=True) as client:
                dep = client.read_deployment_by_name("kdbench-domain/science")
                run = client.create_flow_run_from_deployment(dep.id)
                # wait until the student is training (its MLflow run is open), then kill worker and flow run
                deadline = time.time() + 600
                while time.time() < deadline:
                    exp = c.get_experiment_by_name("kdbench-science")
                    if exp and any(
                        r.data.tags.get("kdbench.role") == "student_after" and r.info.status == "RUNNING"
                        for r in c.search_runs([exp.experiment_id])
                    ):
                        break
                    time.sleep(2)
                else:
                    pytest.fail("the student never started:\n" + logs[0].read_text()[-3000:])
                time.sleep(1)
                _kill_tree(a)
                b = _worker(env, tmp, "alive")
                state = _wait_final(client, run.id, 900, logs)
                history = [s.type.value for s in client.read_flow_run_states(run.id)]
                final = client.read_flow_run(run.id)
    finally:
        _stop(*[p for p in (a, b) if p is not None])
    assert state.is_completed(), (state.message, history)
    assert "CRASHED" in history and history.index("CRASHED") < len(history) - 1, history
    assert final.run_count == 2, final.run_count
    assert _roles(c, "science") == ["elicitation", "student_after", "student_before", "teacher"]
    assert "RUNNING" not in _statuses(c)
