"""The steps of a domain run as plain functions: what the Prefect flow composes.

Each step takes the resolved RunConfig (as a dict, so Prefect can hash it for
caching) and the typed results of the steps before it, does its work through
the library, records it in MLflow (the records are built in kdbench.tracking),
and returns a typed, serialisable result. Tests call these directly;
flows/tasks.py wraps each in a Prefect task.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from kdbench import names, tracking
from kdbench.config import TINY, RunConfig, device_for, dump_config
from kdbench.data import content_hash
from kdbench.dataset import DatasetInfo, add_topk, build_dataset
from kdbench.distill.registry import elicitation_methods
from kdbench.distill.run import distill, distill_key
from kdbench.elicit import elicit
from kdbench.evaluate import evaluate, evaluate_retention, retention_tasks, tasks_for
from kdbench.log import get_logger
from kdbench.metrics import all_gaps, flat_metrics, retention_metrics
from kdbench.models.adapt import adapt_teacher
from kdbench.models.loading import identity
from kdbench.models.refs import needs_tiny, resolve
from kdbench.models.tiny import build_tiny_models
from kdbench.packs import load_pack
from kdbench.report import write_report

log = get_logger(__name__)


# ---- what the steps hand each other ------------------------------------------------


class Models(BaseModel):
    """Resolved model references: paths or hub ids (what kdbench makes, tiny, smollm2, pruned and adapted
    teachers, built and cached under the home)."""

    teacher: str
    students: list[str]
    tiny: dict | None = None  # the tiny models' build card, when they are used


class Elicited(BaseModel):
    """The elicitation's rows on disk and its statistics."""

    path: str
    stats: dict
    cached: bool = False


class Data(BaseModel):
    """The distillation dataset and what the teacher spent to make it."""

    path: str
    manifest: dict
    elicitation_run: str
    teacher_tokens: int  # tokens of every distinct teacher output behind the data
    teacher_seconds: float | None = None  # None when earlier runs generated some of it (unmeasured here)

    def info(self) -> DatasetInfo:
        return DatasetInfo(Path(self.path), self.manifest)


class Evaluation(BaseModel):
    """One model's scores on the pack's tasks, tracked as one MLflow run."""

    role: str  # names.ROLE_TEACHER / ROLE_BEFORE / ROLE_AFTER
    model: str
    metrics: dict[str, dict[str, float]]  # task -> {metric: value, <metric>_stderr, n}
    retention: dict[str, dict[str, float]] = {}  # the same, on the retention tasks (students before: forgetting)
    samples_path: str
    seconds: float
    run_id: str
    cached: bool = False


class StudentResult(BaseModel):
    """One distilled (student, algorithm, seed), evaluated and tracked."""

    algorithm: str
    seed: int
    index: int  # which of the run's students
    student: str
    model_dir: str
    metrics: dict[str, dict[str, float]]
    run_id: str
    cached: bool = False


def _cfg(cfg: dict | RunConfig) -> RunConfig:
    return cfg if isinstance(cfg, RunConfig) else RunConfig.model_validate(cfg)


def _open(rc: RunConfig, pack, key: str, name: str, tags: dict[str, str]):
    """The tracked MLflow run for ``key`` (resumed if it exists) in the pack's experiment."""
    c = tracking.client(rc)
    exp = tracking.experiment_id(c, rc, pack.name)
    return c, tracking.tracked_run(c, exp, key, name, tags, rc.home_path / "locks")


# ---- the steps ------------------------------------------------------------------------


def prepare_models(cfg: dict) -> Models:
    """Resolve teacher and student references to what from_pretrained loads: build the embedded tiny models if
    a reference needs them, make the references kdbench makes (smollm2, pruned:<ref>:<N>; kdbench.models.refs),
    and adapt the teacher to the pack's domain when models.teacher_adapt asks for it."""
    rc = _cfg(cfg)
    pack = load_pack(rc.pack)
    refs = [rc.models.teacher, *rc.models.students]
    tiny = None
    if any(needs_tiny(r) for r in refs):
        tiny = build_tiny_models(pack, rc.tiny, rc.home_path, device=device_for(rc))
        log.info(
            f"{pack.name}: {'reusing cached' if tiny.cached else 'built'} tiny models (teacher "
            f"{tiny.info['teacher_params']:,} params, student {tiny.info['student_params']:,}) in "
            f"{Path(tiny.teacher).parent}"
        )

    def made(ref: str, role_tiny: str | None) -> str:
        if ref == TINY:
            assert role_tiny is not None
            return role_tiny
        return resolve(
            ref,
            rc.home_path,
            tiny_teacher=tiny.teacher if tiny else None,
            trust_remote_code=rc.models.trust_remote_code,
        )

    teacher = made(rc.models.teacher, tiny.teacher if tiny else None)
    students = [made(s, tiny.student if tiny else None) for s in rc.models.students]
    if rc.models.teacher_adapt.epochs > 0:
        adapted = adapt_teacher(
            teacher,
            pack,
            rc.models.teacher_adapt,
            rc.home_path,
            revision=rc.models.revision,
            dtype=rc.models.dtype,
            trust_remote_code=rc.models.trust_remote_code,
            device=device_for(rc),
        )
        if adapted.cached:
            log.info(f"{pack.name}: reusing the domain-adapted teacher at {adapted.path}")
        teacher = adapted.path
    return Models(teacher=teacher, students=students, tiny=tiny.info if tiny else None)


def _ensure_models(cfg: dict, models: Models) -> Models:
    """``models`` as a cached Prefect result gave them, or made again when a folder kdbench made behind it
    (tiny, converted, pruned, adapted) was deleted."""
    rc = _cfg(cfg)
    made = [
        m
        for m, want in zip([models.teacher, *models.students], [rc.models.teacher, *rc.models.students], strict=True)
        if m != want
    ]
    if all(Path(m).exists() for m in made):
        return models
    log.info(f"{rc.pack}: model folders kdbench made for a cached result are gone; making them again")
    return prepare_models(cfg)


def _ensure_data(cfg: dict, data: Data, models: Models) -> Data:
    """``data`` as a cached Prefect result gave it, or rebuilt (from the generation cache) when its folder was
    deleted: a cache cleaned by hand costs a recomputation, never a failed run."""
    if (Path(data.path) / "manifest.json").exists():
        return data
    log.info(f"{_cfg(cfg).pack}: the dataset folder {data.path} of a cached result is gone; rebuilding it")
    return dataset_step(cfg, elicit_step(cfg, models), models)


def elicit_step(cfg: dict, models: Models) -> Elicited:
    """Elicit with the teacher (and the first student, for feedback and self-knowledge)."""
    models = _ensure_models(cfg, models)
    rc = _cfg(cfg)
    pack = load_pack(rc.pack)
    methods = elicitation_methods(rc)
    extra = [m for m in methods if m not in rc.elicit.methods]
    if extra:
        log.info(f"{pack.name}: adding elicitation method(s) {extra}, needed by the selected algorithms")
    res = elicit(
        pack, models.teacher, rc, rc.home_path, device=device_for(rc), student_ref=models.students[0], methods=methods
    )
    if res.cached:
        log.info(f"{pack.name}: reusing cached elicitation ({res.stats['rows']} rows) from {res.path.parent}")
    return Elicited(path=str(res.path), stats=res.stats, cached=res.cached)


def dataset_step(cfg: dict, elicited: Elicited, models: Models) -> Data:
    """Filter and decontaminate the elicited rows; save the dataset; track the elicitation run
    (its prompts, sampling settings, counts and filter rates)."""
    models = _ensure_models(cfg, models)
    if not Path(elicited.path).exists():
        log.info(
            f"{_cfg(cfg).pack}: the elicited rows {elicited.path} of a cached result are gone; eliciting "
            "again (the generation cache serves what it holds)"
        )
        elicited = elicit_step(cfg, models)
    rc = _cfg(cfg)
    pack = load_pack(rc.pack)
    info = build_dataset(pack, Path(elicited.path), rc.home_path)
    if "feature" in elicitation_methods(rc):
        info = add_topk(info, models.teacher, rc, device=device_for(rc))
    m, st = info.manifest, elicited.stats
    log.info(
        f"{pack.name}: dataset of {m['rows']} examples (dropped {m['dropped']}; decontamination rate "
        f"{m['decontam_rate']:.2%}) at {info.path}"
    )
    key = content_hash("elicitation", m["data_hash"], identity(models.teacher))
    record = tracking.elicitation_record(pack, models.teacher, st, m)
    c, run = _open(rc, pack, key, f"{pack.name}/{names.ROLE_ELICITATION}", record.tags)
    with run as run_id:
        tracking.log_record(
            c,
            run_id,
            record,
            config_yaml=dump_config(rc),
            dicts={
                "dataset_manifest.json": m,
                "elicitation_stats.json": {k: v for k, v in st.items() if k != "examples"},
                "elicitation_examples.json": st.get("examples", {}),
            },
        )  # each method's first prompts, with answers
    return Data(
        path=str(info.path),
        manifest=m,
        elicitation_run=run_id,
        teacher_tokens=st["teacher_tokens"],
        teacher_seconds=st["teacher_seconds"],
    )


def baseline_step(cfg: dict, role: str, models: Models, index: int, data: Data) -> Evaluation:
    """Evaluate the teacher (role 'teacher') or student ``index`` before distillation
    (role 'student_before'); track it as a baseline run."""
    models = _ensure_models(cfg, models)
    model = models.teacher if role == names.ROLE_TEACHER else models.students[index]
    rc = _cfg(cfg)
    pack = load_pack(rc.pack)
    res = evaluate(model, pack, rc, rc.home_path, device=device_for(rc), label=role)
    ret = None
    if role == names.ROLE_BEFORE and retention_tasks(pack, rc):
        ret = evaluate_retention(model, pack, rc, rc.home_path, device=device_for(rc), label=role)
    key = content_hash(
        "baseline",
        role,
        identity(model, rc.models.revision if role == names.ROLE_TEACHER else None),
        pack.data_hash,
        tasks_for(pack, rc),
        rc.eval.model_dump(exclude={"samples_per_task"}),
    )
    record = tracking.baseline_record(pack, role, model, res, data.manifest["data_hash"], tasks_for(pack, rc))
    if ret is not None:
        record.metrics.update(retention_metrics(ret.metrics))
    c, run = _open(rc, pack, key, f"{pack.name}/{role}", record.tags)
    with run as run_id, tempfile.TemporaryDirectory(prefix="kdbench-samples-") as tmp:
        samples = tracking.merged_samples(res.samples_path, ret.samples_path if ret else None, Path(tmp))
        tracking.log_record(c, run_id, record, config_yaml=dump_config(rc), artifacts=[samples])
    return Evaluation(
        role=role,
        model=model,
        metrics=res.metrics,
        samples_path=res.samples_path,
        seconds=res.seconds,
        run_id=run_id,
        cached=res.cached,
        retention=ret.metrics if ret else {},
    )


def student_step(
    cfg: dict,
    algorithm: str,
    seed: int,
    models: Models,
    index: int,
    data: Data,
    teacher_eval: Evaluation,
    before_eval: Evaluation,
) -> StudentResult:
    """Distill, evaluate and track one (teacher, student ``index``, algorithm, seed) run with its gap metrics."""
    models = _ensure_models(cfg, models)
    data = _ensure_data(cfg, data, models)
    teacher, student = models.teacher, models.students[index]
    rc = _cfg(cfg)
    pack = load_pack(rc.pack)
    info = data.info()
    dkey = distill_key(algorithm, seed, teacher, student, info.manifest, rc)
    key = content_hash("student", dkey, tasks_for(pack, rc), rc.eval.model_dump(exclude={"samples_per_task"}))
    tags = tracking.student_tags(pack, teacher, student, algorithm, seed, info.manifest["data_hash"])
    name = f"{pack.name}/{algorithm}/seed{seed}" + (f"/{Path(student).name}" if len(rc.models.students) > 1 else "")
    c, run = _open(rc, pack, key, name, tags)
    with run as run_id:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        res = distill(
            algorithm,
            seed,
            teacher,
            student,
            info,
            rc,
            rc.home_path,
            device=device_for(rc),
            log_fn=lambda step, values: tracking.log_all(c, run_id, metrics=values, step=step),
        )
        used = {
            "cpu_seconds": time.process_time() - cpu0,
            "wall_seconds": time.perf_counter() - wall0,
            "on_gpu": device_for(rc) == "cuda",
        }
        if res.cached:
            log.info(f"{pack.name}: reusing the distilled student {algorithm} seed {seed} at {res.model_dir}")
        label = f"{algorithm} seed {seed}"
        ev = evaluate(res.model_dir, pack, rc, rc.home_path, device=device_for(rc), label=label)
        metrics = {**flat_metrics(ev.metrics), **all_gaps(teacher_eval.metrics, before_eval.metrics, ev.metrics)}
        ret = None
        if retention_tasks(pack, rc):
            ret = evaluate_retention(res.model_dir, pack, rc, rc.home_path, device=device_for(rc), label=label)
            metrics.update(retention_metrics(ret.metrics, before_eval.retention))
        record = tracking.student_record(
            res,
            ev,
            metrics,
            data,
            info,
            rc.distill.train.model_dump(),
            None if res.cached else used,
            links={
                names.TEACHER_RUN: teacher_eval.run_id,
                names.ELICITATION_RUN: data.elicitation_run,
                names.BEFORE_RUN: before_eval.run_id,
            },
        )
        with tempfile.TemporaryDirectory(prefix="kdbench-samples-") as tmp:
            samples = tracking.merged_samples(ev.samples_path, ret.samples_path if ret else None, Path(tmp))
            tracking.log_record(
                c,
                run_id,
                record,
                config_yaml=dump_config(rc),
                artifacts=[samples],
                dicts={"dataset_manifest.json": info.manifest},
            )
    return StudentResult(
        algorithm=algorithm,
        seed=seed,
        index=index,
        student=student,
        model_dir=res.model_dir,
        metrics=ev.metrics,
        run_id=run_id,
        cached=res.cached,
    )


def report_step(cfg: dict, packs: list[str] | None = None, name: str | None = None) -> dict[str, str]:
    """Write the leaderboard of the run's pack (or of ``packs``) from what MLflow holds."""
    rc = _cfg(cfg)
    paths = write_report(rc, packs=packs or [load_pack(rc.pack).name], name=name)
    return {k: str(v) for k, v in paths.items()}


def summary_line(
    pack: str, rows: list[StudentResult], teacher_eval: Evaluation, befores: list[Evaluation], task: str, metric: str
) -> str:
    """One line of headline scores: teacher, each student before distillation, each distilled row."""
    t = teacher_eval.metrics[task][metric]
    parts = [f"teacher {t:.3f}"]
    several = len(befores) > 1
    for i, b in enumerate(befores):
        parts.append(f"student-before{f' {i}' if several else ''} {b.metrics[task][metric]:.3f}")
    parts += [
        f"{r.algorithm}/s{r.seed}{f'/student{r.index}' if several else ''} {r.metrics[task][metric]:.3f}" for r in rows
    ]
    return f"{pack} {task}.{metric}: " + ", ".join(parts)
