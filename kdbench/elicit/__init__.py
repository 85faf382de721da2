"""Knowledge elicitation: draw training data out of a teacher (survey, section 3).

``METHODS`` maps a method name to a function ``(ctx) -> rows``; every row is a
dict with at least id, method, topic, prompt and response. ``elicit`` runs the
selected methods and writes their rows and statistics under one content-hashed
folder, so a rerun with the same teacher, pack and settings reuses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdbench.backends import Sampling
from kdbench.data import content_hash, read_done, write_json, write_jsonl
from kdbench.elicit.feedback import feedback, self_knowledge, warmup_config
from kdbench.elicit.labeling import label
from kdbench.elicit.synthesis import curate, expand
from kdbench.elicit.teacher import CachedModel
from kdbench.errors import ConfigError, did_you_mean
from kdbench.locks import locked
from kdbench.models.loading import identity

METHODS = {
    "labeling": label,
    "expansion": expand,
    "curation": curate,
    "feedback": feedback,
    "self_knowledge": self_knowledge,
}
# "feature" (the teacher's top-k log-probs) annotates the finished dataset: see kdbench/topk.py
ANNOTATIONS = ("feature",)
NEEDS_STUDENT = ("feedback", "self_knowledge")
# bumped when a method's rows change for the same settings, so older cached rows are not reused
# (self_knowledge 2: each sample of a seed is drawn with its own seed; before, a seed's samples were one)
METHOD_VERSIONS = {"self_knowledge": 2}


@dataclass
class ElicitContext:
    pack: object
    cfg: object
    teacher: CachedModel
    sampling: Sampling
    seeds: list
    student: CachedModel | None = None  # the student before distillation (feedback, self-knowledge)
    home: Path | None = None


@dataclass
class ElicitResult:
    path: Path  # rows as JSONL
    stats: dict
    cached: bool


def check_methods(methods: list[str], pack) -> None:
    for m in methods:
        if m not in METHODS and m not in ANNOTATIONS:
            raise ConfigError(
                f"elicit.methods: unknown method {m!r}{did_you_mean(m, METHODS)}; "
                f"available: {sorted([*METHODS, *ANNOTATIONS])}"
            )
        if m not in pack.spec.elicitation:
            raise ConfigError(
                f"elicit.methods: {m!r} is not enabled by pack {pack.name!r} "
                f"(its pack.yaml lists elicitation: {pack.spec.elicitation})"
            )


def elicit(
    pack,
    teacher_ref: str,
    cfg,
    home: Path,
    device: str = "cpu",
    student_ref: str | None = None,
    methods: list[str] | None = None,
) -> ElicitResult:
    """Run the elicitation methods with the teacher; rows and stats under <home>/elicit/<pack>-<hash>."""
    e = cfg.elicit
    methods = [m for m in (methods or e.methods) if m in METHODS]
    check_methods(methods, pack)
    if any(m in NEEDS_STUDENT for m in methods) and student_ref is None:
        raise ConfigError(f"elicitation methods {[m for m in methods if m in NEEDS_STUDENT]} need a student model")
    sampling = Sampling(max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p)
    sk = "self_knowledge" in methods
    # the warm-up trains the sampler: its settings shape the rows
    warmup = warmup_config(cfg, student_ref) if sk and student_ref is not None else None
    versions = {m: METHOD_VERSIONS[m] for m in methods if m in METHOD_VERSIONS}
    # parts that are absent add nothing to the key, so caches made before they existed stay valid
    optional = [p for p in (warmup.model_dump(exclude={"fused"}) if warmup else None, versions) if p]
    key = content_hash(
        identity(teacher_ref, cfg.models.revision),
        pack.data_hash,
        methods,
        e.model_dump(
            exclude={
                "backend",
                "batch_size",
                "openai_concurrency",
                "methods",
                *(() if sk else ("self_knowledge_warmup_epochs",)),
            }
        ),
        identity(student_ref) if student_ref is not None and any(m in NEEDS_STUDENT for m in methods) else None,
        *optional,
    )
    out = Path(home) / "elicit" / f"{pack.name}-{key}"
    with locked(out):
        stats = read_done(out / "stats.json") if (out / "DONE").exists() else None
        if stats is not None:
            return ElicitResult(out / "rows.jsonl", stats, True)
        return _run_methods(pack, teacher_ref, student_ref, cfg, home, device, methods, sampling, out, key)


def _run_methods(pack, teacher_ref, student_ref, cfg, home, device, methods, sampling, out, key) -> ElicitResult:
    e = cfg.elicit
    teacher = CachedModel(teacher_ref, cfg, Path(home), device=device, backend_name=e.backend)
    student = (
        CachedModel(student_ref, cfg, Path(home), device=device, backend_name="hf")
        if any(m in NEEDS_STUDENT for m in methods)
        else None
    )
    seeds = pack.seeds[: e.limit] if e.limit else pack.seeds
    ctx = ElicitContext(
        pack=pack, cfg=cfg, teacher=teacher, sampling=sampling, seeds=seeds, student=student, home=Path(home)
    )
    rows: list[dict] = []
    for m in methods:
        got = METHODS[m](ctx)
        rows += got
        teacher.stats.setdefault(m, {})["rows"] = len(got)
    stats = {
        "methods": teacher.stats,
        "rows": len(rows),
        "sampling": sampling.as_dict(),
        "backend": teacher.backend_name,
        "teacher_generated_tokens": teacher.generated_tokens,
        # the data's cost: tokens of every teacher output behind it, whether generated in this run or
        # served by the generation cache (an API teacher without a local tokenizer: those it generated)
        "teacher_tokens": teacher.output_tokens or teacher.generated_tokens,
        # the teacher's time, known only when this run generated every output it used (else None: an
        # earlier run spent time we did not measure, and 0 would understate the data's cost)
        "teacher_seconds": None if teacher.reused else round(getattr(teacher._backend, "seconds", 0.0), 2),
        "teacher_outputs_reused": len(teacher.reused),
        "examples": teacher.examples,
    }  # each method's first requests (prompts, sampling) and answers
    write_jsonl(out / "rows.jsonl", rows)
    write_json(out / "stats.json", stats)
    (out / "DONE").write_text(key)
    return ElicitResult(out / "rows.jsonl", stats, False)
