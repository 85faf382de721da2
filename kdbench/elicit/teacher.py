"""A model as elicitation methods see it: cached, resumable generation and scoring.

``CachedModel.generate(method, requests)`` answers chat requests through a backend,
caching every answer by a content hash of (teacher identity and revision,
method, messages, sampling settings). The backend is only built when some
request is not cached yet, so a fully cached rerun never loads the teacher.
The teacher is one; feedback and self-knowledge also wrap the student in one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kdbench.data import content_hash
from kdbench.elicit.backends import Messages, Sampling, make_backend, resolve_backend_name
from kdbench.elicit.cache import GenerationCache
from kdbench.errors import ConfigError
from kdbench.models.loading import identity


@dataclass
class CachedModel:
    ref: str
    cfg: object  # RunConfig
    home: Path
    device: str = "cpu"
    backend_name: str = "auto"
    _backend: object = None
    stats: dict = field(default_factory=dict)  # method -> {requests, cached, generated_tokens}
    output_tokens: int = 0  # tokens of every output returned, generated now or served by the cache
    _tokenizer: object = None

    def __post_init__(self):
        self.backend_name = resolve_backend_name(self.backend_name)
        self.identity = identity(self.ref, self.cfg.models.revision)
        self.cache = GenerationCache(Path(self.home) / "generations" / f"{content_hash(self.identity)}.jsonl")

    @property
    def backend(self):
        if self._backend is None:
            self._backend = make_backend(self.backend_name, self.ref, self.cfg, self.device)
        return self._backend

    def key(self, method: str, messages: Messages, sampling: Sampling) -> str:
        # The backend is not part of the key: greedy outputs agree across backends,
        # and a cache filled by one backend should serve the others.
        return content_hash(self.identity, method, messages, sampling.as_dict())

    def generate(self, method: str, requests: list[Messages], sampling: Sampling, chunk: int = 256,
                 account: str | None = None) -> list[str]:
        """Answers to ``requests``, cached under ``method``; counted in ``stats`` under ``account`` or ``method``."""
        keys = [self.key(method, m, sampling) for m in requests]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        # unique requests only: the same prompt asked twice is generated once (to draw several samples of a
        # prompt, call once per sample with its own sampling.seed, as self_knowledge does)
        todo = list({keys[i]: i for i in todo}.values())
        st = self.stats.setdefault(account or method, {"requests": 0, "cached": 0, "generated": 0})
        st["requests"] += len(requests)
        st["cached"] += len(requests) - len(todo)
        if todo and len(todo) < len(requests):
            print(f"[kdbench] {method}: reusing {len(requests) - len(todo)} cached generations, "
                  f"generating {len(todo)}")
        streaming = getattr(self.backend, "name", "") == "openai"  # slow, failure-prone: cache every answer
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            extra = {"on_result": lambda j, o, part=part: self.cache.put_many([(keys[part[j]], o)])} if streaming else {}
            outs = self.backend.generate([requests[i] for i in part], sampling,
                                         desc=f"{method} ({start + len(part)}/{len(todo)})", **extra)
            if not streaming:
                self.cache.put_many([(keys[i], o) for i, o in zip(part, outs, strict=True)])
            st["generated"] += len(part)
        outs = [self.cache.get(k) for k in keys]
        self.output_tokens += self._count_tokens(outs)
        return outs

    def _count_tokens(self, texts: list[str]) -> int:
        """Tokens of ``texts`` under this model's tokenizer (0 when it has none here, e.g. an API model)."""
        if self._tokenizer is None:  # the backend's, when it has loaded one; else loaded for counting alone
            self._tokenizer = getattr(self._backend, "tokenizer", None)
        if self._tokenizer is None:
            from kdbench.models.loading import load_tokenizer

            try:
                self._tokenizer = load_tokenizer(self.ref, revision=self.cfg.models.revision,
                                                 trust_remote_code=self.cfg.models.trust_remote_code)
            except Exception:  # an API model name: no local tokenizer
                self._tokenizer = False
        if self._tokenizer is False:
            return 0
        return sum(len(self._tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts if t)

    def score(self, method: str, requests: list[Messages], responses: list[str]) -> list[tuple[float, int]]:
        """Cached (sum log-prob, tokens) of each response under this model: a likelihood judge."""
        import json

        keys = [content_hash(self.identity, method, "score", m, r) for m, r in zip(requests, responses, strict=True)]
        todo = list({k: i for i, k in enumerate(keys) if k not in self.cache}.values())
        if todo:
            if not hasattr(self.backend, "score"):
                raise ConfigError(f"the {self.backend_name} backend cannot score answers; use elicit.judge: prompt")
            got = self.backend.score([requests[i] for i in todo], [responses[i] for i in todo],
                                     desc=f"{method}: judge")
            self.cache.put_many([(keys[i], json.dumps(g)) for i, g in zip(todo, got, strict=True)])
        return [tuple(json.loads(self.cache.get(k))) for k in keys]

    @property
    def generated_tokens(self) -> int:
        return getattr(self._backend, "generated_tokens", 0)


def teacher_system(pack, method: str) -> str:
    """The pack's system prompt, plus its instruction for ``method`` when it has one."""
    instruction = pack.spec.teacher.instructions.get(method, "").strip()
    return pack.spec.teacher.system_prompt.strip() + (f"\n{instruction}" if instruction else "")


Teacher = CachedModel  # the common case, by its role
