"""Teacher backends: turn chat requests into generations (and, where they can, score answers).

Every backend has ``generate(requests, sampling) -> list[str]`` where a request
is a list of chat messages; ``hf`` and ``vllm`` also have ``score``. ``BACKENDS``
is the registry; ``auto`` picks vLLM when a GPU and a vLLM environment are
present, else ``hf``. To add a backend: a module here with a class taking
``(ref, **settings)``, one entry in ``BACKENDS`` and, if it needs settings, a
line in ``make_backend``.
"""

from __future__ import annotations

import torch

from kdbench.backends.base import Messages, Sampling
from kdbench.backends.hf import HFBackend
from kdbench.backends.openai import OpenAIBackend
from kdbench.backends.vllm import VLLMBackend, vllm_python
from kdbench.config import TINY
from kdbench.errors import ConfigError, KdbenchError

BACKENDS = {"hf": HFBackend, "vllm": VLLMBackend, "openai": OpenAIBackend}
Backend = HFBackend | VLLMBackend | OpenAIBackend


def _vllm_usable() -> bool:
    """A GPU, and an environment that can run the vLLM worker."""
    if not torch.cuda.is_available():
        return False
    try:
        vllm_python()
        return True
    except KdbenchError:
        return False


def resolve_backend_name(name: str) -> str:
    if name == "auto":
        return "vllm" if _vllm_usable() else "hf"
    if name not in BACKENDS:
        raise ConfigError(f"elicit.backend: {name!r} is not available here; available: {sorted(BACKENDS)}")
    return name


def make_backend(name: str, ref: str, cfg, device: str) -> Backend:
    """A backend for the teacher ``ref``; ``cfg`` is the run's RunConfig."""
    name = resolve_backend_name(name)
    if name == "openai":
        return OpenAIBackend(
            ref,
            base_url=cfg.elicit.openai_base_url,
            model=cfg.elicit.openai_model,
            concurrency=cfg.elicit.openai_concurrency,
        )
    common = {
        "revision": cfg.models.revision,
        "dtype": cfg.models.dtype,
        "device": device,
        "trust_remote_code": cfg.models.trust_remote_code,
        "batch_size": cfg.elicit.batch_size,
    }
    if name == "vllm":
        engine = cfg.elicit.vllm
        tiny_len = cfg.tiny.max_positions if cfg.models.teacher == TINY else None
        return VLLMBackend(
            ref,
            home=cfg.home_path,
            python=cfg.elicit.vllm_python,
            max_model_len=engine.max_model_len or tiny_len,
            tensor_parallel_size=engine.tensor_parallel_size,
            pipeline_parallel_size=engine.pipeline_parallel_size,
            gpu_memory_utilization=engine.gpu_memory_utilization,
            **common,
        )
    return BACKENDS[name](ref, **common)


__all__ = [
    "BACKENDS",
    "Backend",
    "HFBackend",
    "Messages",
    "OpenAIBackend",
    "Sampling",
    "VLLMBackend",
    "make_backend",
    "resolve_backend_name",
]
