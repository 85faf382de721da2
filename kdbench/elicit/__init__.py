"""Knowledge elicitation: draw training data out of a teacher (survey, section 3).

``METHODS`` maps a method name to a function ``(ctx) -> rows``; every row is a
dict with at least id, method, topic, prompt and response. ``elicit`` runs the
selected methods and writes their rows and statistics under one content-hashed
folder, so a rerun with the same teacher, pack and settings reuses them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kdbench.data import content_hash, read_jsonl, write_jsonl
from kdbench.elicit.backends import Sampling
from kdbench.elicit.labeling import label
from kdbench.elicit.teacher import Teacher
from kdbench.errors import ConfigError, did_you_mean
from kdbench.models.loading import identity

METHODS = {"labeling": label}


@dataclass
class ElicitContext:
    pack: object
    cfg: object
    teacher: Teacher
    sampling: Sampling
    seeds: list


@dataclass
class ElicitResult:
    path: Path  # rows as JSONL
    stats: dict
    cached: bool


def check_methods(methods: list[str], pack) -> None:
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"elicit.methods: unknown method {m!r}{did_you_mean(m, METHODS)}; "
                              f"available: {sorted(METHODS)}")
        if m not in pack.spec.elicitation:
            raise ConfigError(f"elicit.methods: {m!r} is not enabled by pack {pack.name!r} "
                              f"(its pack.yaml lists elicitation: {pack.spec.elicitation})")


def elicit(pack, teacher_ref: str, cfg, home: Path, device: str = "cpu") -> ElicitResult:
    """Run cfg.elicit.methods with the teacher; rows and stats under <home>/elicit/<pack>-<hash>."""
    e = cfg.elicit
    check_methods(e.methods, pack)
    sampling = Sampling(max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p)
    key = content_hash(identity(teacher_ref, cfg.models.revision), pack.data_hash, e.model_dump(
        exclude={"backend", "batch_size", "openai_concurrency"}))
    out = Path(home) / "elicit" / f"{pack.name}-{key}"
    if (out / "DONE").exists():
        return ElicitResult(out / "rows.jsonl", json.loads((out / "stats.json").read_text()), True)
    teacher = Teacher(teacher_ref, cfg, Path(home), device=device, backend_name=e.backend)
    seeds = pack.seeds[: e.limit] if e.limit else pack.seeds
    ctx = ElicitContext(pack=pack, cfg=cfg, teacher=teacher, sampling=sampling, seeds=seeds)
    rows: list[dict] = []
    for m in e.methods:
        got = METHODS[m](ctx)
        rows += got
        teacher.stats.setdefault(m, {})["rows"] = len(got)
    stats = {"methods": teacher.stats, "rows": len(rows), "sampling": sampling.as_dict(),
             "backend": teacher.backend_name, "teacher_generated_tokens": teacher.generated_tokens,
             "teacher_seconds": round(getattr(teacher._backend, "seconds", 0.0), 2)}
    write_jsonl(out / "rows.jsonl", rows)
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    (out / "DONE").write_text(key)
    return ElicitResult(out / "rows.jsonl", stats, False)


def load_rows(result: ElicitResult) -> list[dict]:
    return read_jsonl(result.path)
