"""Real servers for the tests: a Prefect server and an MLflow tracking server on 127.0.0.1, started as processes."""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc, seconds: float, log: Path) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url}: server exited:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1)
    pytest.fail(f"{url} not up after {seconds} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def prefect_and_mlflow(tmp: Path, backend_store_uri: str, extra_env: dict | None = None, mlflow_workers: int = 1):
    """Both servers, logging to <tmp>/prefect.log and <tmp>/mlflow.log; yields (env with PREFECT_API_URL and
    MLFLOW_TRACKING_URI set, logs, procs); stops them on exit."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        **(extra_env or {}),
    }
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    pp, mp = free_port(), free_port()
    logs = {n: tmp / f"{n}.log" for n in ("prefect", "mlflow", "serve")}
    prefect = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(pp)],
        env=env,
        stdout=logs["prefect"].open("w"),
        stderr=subprocess.STDOUT,
    )
    mlflow = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mp), "--workers", str(mlflow_workers)]
        + ["--backend-store-uri", backend_store_uri, "--artifacts-destination", str(tmp / "mlartifacts")],
        env=env,
        stdout=logs["mlflow"].open("w"),
        stderr=subprocess.STDOUT,
        cwd=tmp,
    )
    procs = [prefect, mlflow]
    try:
        wait_http(f"http://127.0.0.1:{pp}/api/health", prefect, 180, logs["prefect"])
        wait_http(f"http://127.0.0.1:{mp}/health", mlflow, 180, logs["mlflow"])
        env.update(PREFECT_API_URL=f"http://127.0.0.1:{pp}/api", MLFLOW_TRACKING_URI=f"http://127.0.0.1:{mp}")
        yield env, logs, procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
