"""vLLM for the tests: its Python (or a skip, unless KDBENCH_REQUIRE_VLLM=1) and its OpenAI-compatible server."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kdbench.backends.vllm import vllm_python, worker_env
from kdbench.errors import KdbenchError


def vllm_python_or_skip() -> str:
    """The vLLM environment's Python; the test is skipped without one (CI sets KDBENCH_REQUIRE_VLLM=1: fail)."""
    try:
        return vllm_python()
    except KdbenchError as e:
        if os.environ.get("KDBENCH_REQUIRE_VLLM") == "1":
            raise
        pytest.skip(f"no vLLM environment here ({e}); `make vllm-venv`")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def vllm_server(model: str, name: str, *, max_model_len: int, workdir: Path) -> Iterator[str]:
    """vLLM's API server on ``model`` served as ``name`` (float32, eager) until the block ends; yields its URL
    (without /v1). Its log is ``workdir/vllm-server.log``; a server that exits or is not healthy in 300 s fails."""
    py = vllm_python_or_skip()
    port = free_port()
    log_path = workdir / "vllm-server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [py, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name", name]
            + ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"]
            + ["--max-model-len", str(max_model_len), "--enforce-eager"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=worker_env(workdir / "vllm", False),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"vLLM API server exited: {log_path.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                time.sleep(2)
        else:
            pytest.fail("vLLM API server not healthy after 300 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
