"""Teacher backends: turn chat requests into generations.

Every backend has ``generate(requests, sampling) -> list[str]`` where a request
is a list of chat messages. ``BACKENDS`` is the registry; ``auto`` picks vLLM
when a GPU and vLLM are present, else ``hf``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from kdbench.data import collate, encode_response, encode_text, pad_id, render_messages
from kdbench.errors import ConfigError
from kdbench.models.sampling import sample, token_logprobs

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class HFBackend:
    """Batched ``generate`` with transformers: left padding, batches sorted by length."""

    name = "hf"

    def __init__(self, ref: str, *, revision=None, dtype="float32", device="cpu", trust_remote_code=False,
                 batch_size: int = 32, model=None, tokenizer=None):
        from kdbench.models.loading import load_model

        if model is None:
            model, tokenizer = load_model(ref, revision=revision, dtype=dtype, device=device,
                                          trust_remote_code=trust_remote_code)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device, self.batch_size = device, batch_size
        self.generated_tokens = 0
        self.seconds = 0.0

    @torch.inference_mode()
    def generate(self, requests: list[Messages], sampling: Sampling, desc: str = "generate") -> list[str]:
        """Greedy, or samples from the model's own softmax(logits / temperature) with top_p: nothing from the
        model's generation_config (top_k, repetition penalty, ...) bends the draws (kdbench.models.sampling)."""
        tok = self.tokenizer
        ids = [encode_text(tok, render_messages(tok, m)) for m in requests]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        outputs: list[str] = [""] * len(ids)
        gen = torch.Generator(device="cpu").manual_seed(sampling.seed)
        bar = tqdm(range(0, len(order), self.batch_size), desc=desc, dynamic_ncols=True, mininterval=1.0)
        for start in bar:
            batch = order[start : start + self.batch_size]
            t0 = time.perf_counter()
            conts, _ = sample(self.model, [ids[i] for i in batch], max_new_tokens=sampling.max_new_tokens,
                              eos=tok.eos_token_id, pad=pad_id(tok), temperature=sampling.temperature,
                              top_p=sampling.top_p, generator=gen)
            self.seconds += time.perf_counter() - t0
            for i, c in zip(batch, conts, strict=True):
                self.generated_tokens += len(c)
                outputs[i] = tok.decode(c, skip_special_tokens=True).strip()
            bar.set_postfix(tok_s=f"{self.generated_tokens / max(self.seconds, 1e-9):,.0f}")
        return outputs

    @torch.inference_mode()
    def score(self, requests: list[Messages], responses: list[str], desc: str = "score") -> list[tuple[float, int]]:
        """(sum of log-probs, token count) of each response given its request: the teacher as judge."""
        tok = self.tokenizer
        examples = []
        for m, r in zip(requests, responses, strict=True):
            p_ids, r_ids = encode_text(tok, render_messages(tok, m)), encode_response(tok, m, r)
            examples.append({"input_ids": p_ids + r_ids, "loss_mask": [0] * len(p_ids) + [1] * len(r_ids)})
        out: list[tuple[float, int]] = []
        for start in tqdm(range(0, len(examples), self.batch_size), desc=desc, dynamic_ncols=True, mininterval=1.0):
            b = {k: v.to(self.device) for k, v in collate(examples[start : start + self.batch_size],
                                                          pad_id(tok)).items()}
            logits = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
            lp = token_logprobs(logits, b["input_ids"][:, 1:])
            mask = b["loss_mask"][:, 1:]
            out += [(float(s), int(n)) for s, n in zip((lp * mask).sum(-1).tolist(), mask.sum(-1).tolist(),
                                                       strict=True)]
        return out


def _vllm_usable() -> bool:
    """A GPU, and an environment that can run the vLLM worker."""
    if not torch.cuda.is_available():
        return False
    from kdbench.elicit.vllm_backend import vllm_python

    try:
        vllm_python()
        return True
    except Exception:
        return False


def resolve_backend_name(name: str) -> str:
    if name == "auto":
        return "vllm" if _vllm_usable() else "hf"
    if name not in BACKENDS:
        raise ConfigError(f"elicit.backend: {name!r} is not available here; available: {sorted(BACKENDS)}")
    return name


def make_backend(name: str, ref: str, cfg, device: str):
    """A backend for the teacher ``ref``; ``cfg`` is the run's RunConfig."""
    name = resolve_backend_name(name)
    if name == "openai":
        return BACKENDS[name](ref, base_url=cfg.elicit.openai_base_url, model=cfg.elicit.openai_model,
                              concurrency=cfg.elicit.openai_concurrency)
    kwargs = {"home": cfg.home_path, "python": cfg.elicit.vllm_python,
              "max_model_len": cfg.tiny.max_positions if cfg.models.teacher == "tiny" else None} \
        if name == "vllm" else {}
    return BACKENDS[name](ref, revision=cfg.models.revision, dtype=cfg.models.dtype, device=device,
                          trust_remote_code=cfg.models.trust_remote_code, batch_size=cfg.elicit.batch_size, **kwargs)


def _lazy(module: str, cls: str):
    """Import optional backends on first use (vLLM and the OpenAI client are extras)."""

    def make(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(module), cls)(*args, **kwargs)

    return make


BACKENDS = {"hf": HFBackend, "vllm": _lazy("kdbench.elicit.vllm_backend", "VLLMBackend"),
            "openai": _lazy("kdbench.elicit.openai_backend", "OpenAIBackend")}
