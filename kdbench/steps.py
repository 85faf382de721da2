"""The steps of a domain run as plain functions: what the Prefect flow composes.

Each step takes the resolved RunConfig (as a dict, so Prefect can hash it for
caching) and small, serialisable inputs, does its work through the library,
records it in MLflow, and returns a small serialisable result. Tests call these
directly; flows/domain.py wraps each in a Prefect task.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from kdbench import tracking
from kdbench.config import TINY, RunConfig, device_for, dump_config
from kdbench.data import content_hash
from kdbench.dataset import DatasetInfo, build_dataset
from kdbench.elicit import effective_methods, elicit
from kdbench.evaluate import evaluate, tasks_for
from kdbench.metrics import all_gaps, flat_metrics
from kdbench.models.loading import identity
from kdbench.packs import load_pack


def _cfg(cfg: dict | RunConfig) -> RunConfig:
    return cfg if isinstance(cfg, RunConfig) else RunConfig.model_validate(cfg)


def _base_tags(cfg: RunConfig, pack, role: str) -> dict[str, str]:
    return {"kdbench.pack": pack.name, "kdbench.pack_version": pack.spec.version,
            "kdbench.pack_data_hash": pack.data_hash, "kdbench.role": role}


def _log_config(c, run_id: str, cfg: RunConfig) -> None:
    c.log_text(run_id, dump_config(cfg), "config.yaml")


def prepare_models(cfg: dict) -> dict:
    """Resolve teacher and student references; build the embedded tiny ones if asked."""
    rc = _cfg(cfg)
    pack = load_pack(rc.pack)
    out = {"teacher": rc.models.teacher, "students": list(rc.models.students), "tiny": None}
    if TINY in [rc.models.teacher, *rc.models.students]:
        from kdbench.models.tiny import build_tiny_models

        tiny = build_tiny_models(pack, rc.tiny, rc.home_path, device=device_for(rc))
        print(f"[kdbench] {pack.name}: {'reusing cached' if tiny.cached else 'built'} tiny models "
              f"(teacher {tiny.info['teacher_params']:,} params, student {tiny.info['student_params']:,}) "
              f"in {Path(tiny.teacher).parent}")
        out["teacher"] = tiny.teacher if rc.models.teacher == TINY else rc.models.teacher
        out["students"] = [tiny.student if s == TINY else s for s in rc.models.students]
        out["tiny"] = tiny.info
    return out


def _ensure_models(cfg: dict, models: dict) -> dict:
    """``models`` as a cached Prefect result gave them, or rebuilt when a folder behind it was deleted."""
    rc = _cfg(cfg)
    built = [m for m, want in zip([models["teacher"], *models["students"]], [rc.models.teacher, *rc.models.students],
                                  strict=True) if want == TINY]
    if all(Path(m).exists() for m in built):
        return models
    print(f"[kdbench] {rc.pack}: the tiny model folders of a cached result are gone; building them again")
    return prepare_models(cfg)


def _ensure_data(cfg: dict, data: dict, models: dict) -> dict:
    """``data`` as a cached Prefect result gave it, or rebuilt (from the generation cache) when its folder was
    deleted: a cache cleaned by hand costs a recomputation, never a failed run."""
    if (Path(data["path"]) / "manifest.json").exists():
        return data
    print(f"[kdbench] {_cfg(cfg).pack}: the dataset folder {data['path']} of a cached result is gone; rebuilding it")
    return dataset_step(cfg, elicit_step(cfg, models), models)


def elicit_step(cfg: dict, models: dict) -> dict:
    """Elicit with the teacher (and the first student, for feedback and self-knowledge)."""
    models = _ensure_models(cfg, models)
    teacher, student = models["teacher"], models["students"][0]
    rc = _cfg(cfg)
    pack = load_pack(rc.pack)
    methods = effective_methods(rc)
    extra = [m for m in methods if m not in rc.elicit.methods]
    if extra:
        print(f"[kdbench] {pack.name}: adding elicitation method(s) {extra}, needed by the selected algorithms")
    res = elicit(pack, teacher, rc, rc.home_path, device=device_for(rc), student_ref=student, methods=methods)
    if res.cached:
        print(f"[kdbench] {pack.name}: reusing cached elicitation ({res.stats['rows']} rows) from {res.path.parent}")
    return {"path": str(res.path), "stats": res.stats, "cached": res.cached}


def dataset_step(cfg: dict, elicited: dict, models: dict) -> dict:
    """Filter and decontaminate the elicited rows; save the dataset; track the elicitation run
    (its prompts, sampling settings, counts and filter rates)."""
    models = _ensure_models(cfg, models)
    if not Path(elicited["path"]).exists():
        print(f"[kdbench] {_cfg(cfg).pack}: the elicited rows {elicited['path']} of a cached result are gone; "
              "eliciting again (the generation cache serves what it holds)")
        elicited = elicit_step(cfg, models)
    teacher = models["teacher"]
    rc = _cfg(cfg)
    pack = load_pack(rc.pack)
    info = build_dataset(pack, Path(elicited["path"]), rc.home_path)
    if "feature" in effective_methods(rc):
        from kdbench.dataset import add_topk

        info = add_topk(info, teacher, rc, device=device_for(rc))
    m = info.manifest
    print(f"[kdbench] {pack.name}: dataset of {m['rows']} examples (dropped {m['dropped']}; "
          f"decontamination rate {m['decontam_rate']:.2%}) at {info.path}")
    c = tracking.client(rc)
    exp = tracking.experiment_id(c, rc, pack.name)
    key = content_hash("elicitation", m["data_hash"], identity(teacher))
    tags = {**_base_tags(rc, pack, "elicitation"), "kdbench.teacher": teacher, "kdbench.data_hash": m["data_hash"]}
    with tracking.tracked_run(c, exp, key, f"{pack.name}/elicitation", tags, rc.home_path / "locks") as run_id:
        st = elicited["stats"]
        from kdbench.elicit.teacher import teacher_system

        params = {"teacher": teacher, "backend": st["backend"], "methods": ",".join(st["methods"]),
                  **{f"sampling.{k}": v for k, v in st["sampling"].items()}}
        for method in st["methods"]:
            params[f"{method}.system_prompt"] = teacher_system(pack, method)
        metrics = {"dataset.rows": m["rows"], "dataset.rows_in": m["rows_in"],
                   "decontam.rate": m["decontam_rate"], "teacher.generated_tokens": st["teacher_generated_tokens"],
                   "teacher.tokens": st.get("teacher_tokens", st["teacher_generated_tokens"]),
                   "teacher.outputs_reused": st.get("teacher_outputs_reused", 0)}
        if st["teacher_seconds"] is not None:  # unknown when earlier runs' generations were reused: not logged
            metrics["teacher.seconds"] = st["teacher_seconds"]
        metrics.update({f"dropped.{k}": v for k, v in m["dropped"].items()})
        metrics.update({f"filter_rate.{k}": v / max(m["rows_in"], 1) for k, v in m["dropped"].items()})
        for method, s in st["methods"].items():
            metrics.update({f"{method}.{k}": v for k, v in s.items() if isinstance(v, (int, float))})
        tracking.log_all(c, run_id, params=params, metrics=metrics)
        c.log_dict(run_id, m, "dataset_manifest.json")
        c.log_dict(run_id, {k: v for k, v in st.items() if k != "examples"}, "elicitation_stats.json")
        c.log_dict(run_id, st.get("examples", {}), "elicitation_examples.json")  # prompts as sent, with answers
        _log_config(c, run_id, rc)
    # the data's cost, charged to every student trained on it
    return {"path": str(info.path), "manifest": m, "elicitation_run": run_id,
            "teacher_generated_tokens": st["teacher_generated_tokens"], "teacher_seconds": st["teacher_seconds"],
            "teacher_tokens": st.get("teacher_tokens", st["teacher_generated_tokens"])}


def baseline_step(cfg: dict, role: str, models: dict, index: int, data: dict) -> dict:
    """Evaluate the teacher (role 'teacher') or student ``index`` before distillation
    (role 'student_before'); track it as a baseline run."""
    models = _ensure_models(cfg, models)
    model = models["teacher"] if role == "teacher" else models["students"][index]
    rc = _cfg(cfg)
    pack = load_pack(rc.pack)
    res = evaluate(model, pack, rc, rc.home_path, device=device_for(rc), label=role)
    c = tracking.client(rc)
    exp = tracking.experiment_id(c, rc, pack.name)
    key = content_hash("baseline", role, identity(model, rc.models.revision if role == "teacher" else None),
                       pack.data_hash, tasks_for(pack, rc), rc.eval.model_dump(exclude={"samples_per_task"}))
    tags = {**_base_tags(rc, pack, role), f"kdbench.{'teacher' if role == 'teacher' else 'student'}": model,
            "kdbench.data_hash": data["manifest"]["data_hash"]}
    with tracking.tracked_run(c, exp, key, f"{pack.name}/{role}", tags, rc.home_path / "locks") as run_id:
        tracking.log_all(c, run_id, params={"model": model, "eval.tasks": ",".join(tasks_for(pack, rc))},
                         metrics={**flat_metrics(res.metrics), "eval.seconds": res.seconds})
        c.log_artifact(run_id, res.samples_path)
        _log_config(c, run_id, rc)
    return {**asdict(res), "run_id": run_id}


def student_step(cfg: dict, algorithm: str, seed: int, models: dict, index: int, data: dict,
                 teacher_eval: dict, before_eval: dict) -> dict:
    """Distill, evaluate and track one (teacher, student ``index``, algorithm, seed) run with its gap metrics."""
    from kdbench.distill.run import distill, distill_key

    models = _ensure_models(cfg, models)
    data = _ensure_data(cfg, data, models)
    teacher, student = models["teacher"], models["students"][index]
    rc = _cfg(cfg)
    pack = load_pack(rc.pack)
    info = DatasetInfo(Path(data["path"]), data["manifest"])
    c = tracking.client(rc)
    exp = tracking.experiment_id(c, rc, pack.name)
    dkey = distill_key(algorithm, seed, teacher, student, info.manifest, rc)
    key = content_hash("student", dkey, tasks_for(pack, rc), rc.eval.model_dump(exclude={"samples_per_task"}))
    tags = {**_base_tags(rc, pack, "student_after"), "kdbench.teacher": teacher, "kdbench.student": student,
            "kdbench.algorithm": algorithm, "kdbench.seed": str(seed), "kdbench.data_hash": info.manifest["data_hash"]}
    name = f"{pack.name}/{algorithm}/seed{seed}" + (f"/{Path(student).name}" if len(rc.models.students) > 1 else "")
    with tracking.tracked_run(c, exp, key, name, tags, rc.home_path / "locks") as run_id:
        def log_fn(step: int, values: dict) -> None:
            tracking.log_all(c, run_id, metrics=values, step=step)

        cpu0, wall0 = time.process_time(), time.perf_counter()
        res = distill(algorithm, seed, teacher, student, info, rc, rc.home_path, device=device_for(rc),
                      log_fn=log_fn)
        cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
        if res.cached:
            print(f"[kdbench] {pack.name}: reusing the distilled student {algorithm} seed {seed} at {res.model_dir}")
        ev = evaluate(res.model_dir, pack, rc, rc.home_path, device=device_for(rc), label=f"{algorithm} seed {seed}")
        metrics = {**flat_metrics(ev.metrics), **all_gaps(teacher_eval["metrics"], before_eval["metrics"], ev.metrics),
                   "cost.train_tokens": res.train_tokens, "cost.train_seconds": res.seconds,
                   "cost.tokens_per_s": res.tokens_per_s, "cost.peak_mem_mb": res.peak_mem_mb,
                   "cost.eval_seconds": ev.seconds, "train.final_loss": res.final_loss,
                   "cost.teacher_tokens": data.get("teacher_tokens", data.get("teacher_generated_tokens", 0))}
        if data.get("teacher_seconds") is not None:  # unknown (not 0) when the generations came from earlier runs
            metrics["cost.teacher_seconds"] = data["teacher_seconds"]
        if not res.cached:  # resource use of this process while it trained (CPU seconds span all threads)
            metrics.update({"cost.cpu_seconds": cpu_s, "cost.wall_seconds": wall_s,
                            "cost.gpu_seconds": wall_s if device_for(rc) == "cuda" else 0.0})
        params = {"algorithm": algorithm, "seed": seed, "teacher": teacher, "student": student,
                  "dataset.rows": info.manifest["rows"], "dataset.path": str(info.path),
                  **{f"hp.{k}": v for k, v in (res.hparams or {}).items()},
                  **{f"train.{k}": v for k, v in rc.distill.train.model_dump().items()}}
        tracking.log_all(c, run_id, params=params, metrics=metrics,
                         tags={"kdbench.teacher_run": teacher_eval.get("run_id", ""),
                               "kdbench.elicitation_run": data.get("elicitation_run", ""),
                               "kdbench.before_run": before_eval.get("run_id", ""),
                               "kdbench.model_dir": res.model_dir})
        c.log_artifact(run_id, ev.samples_path)
        c.log_dict(run_id, info.manifest, "dataset_manifest.json")
        _log_config(c, run_id, rc)
    return {"algorithm": algorithm, "seed": seed, "student": student, "model_dir": res.model_dir,
            "metrics": ev.metrics, "run_id": run_id, "cached": res.cached}


def report_step(cfg: dict, packs: list[str] | None = None, name: str | None = None) -> dict:
    """Write the leaderboard of the run's pack (or of ``packs``) from what MLflow holds."""
    from kdbench.report import write_report

    rc = _cfg(cfg)
    paths = write_report(rc, packs=packs or [load_pack(rc.pack).name], **({"name": name} if name else {}))
    return {k: str(v) for k, v in paths.items()}


def summary_line(pack: str, rows: list[dict], teacher_eval: dict, before_eval: dict, task: str, metric: str) -> str:
    t, b = teacher_eval["metrics"][task][metric], before_eval["metrics"][task][metric]
    parts = [f"teacher {t:.3f}", f"student-before {b:.3f}"]
    parts += [f"{r['algorithm']}/s{r['seed']} {r['metrics'][task][metric]:.3f}" for r in rows]
    return f"{pack} {task}.{metric}: " + ", ".join(parts)

