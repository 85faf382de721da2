"""Evaluate a model on a pack's tasks with lm-evaluation-harness.

``lm_eval.simple_evaluate`` runs the pack's own task YAMLs (found through
``TaskManager(include_path=...)``) and, with ``--public``, the pack's built-in
public tasks. Loading that folder imports the pack's Python (its eval/utils.py):
a pack from outside kdbench's domains/ needs ``trust_pack_code`` first (see
:mod:`kdbench.packs.trust`). Results are cached under ``<home>/evals/<hash>``
by a content hash of the model identity, the pack's data hash (its data, task
YAMLs and Python, and the shared hooks: whatever decides a score) and the
evaluation settings. Per-item predictions are kept for the report's
side-by-side samples.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kdbench.config import TINY
from kdbench.data import content_hash, read_done, write_json
from kdbench.errors import ConfigError, RuntimeFailure, did_you_mean
from kdbench.locks import locked
from kdbench.log import get_logger
from kdbench.models.loading import MODEL_LOCK, identity, load_tokenizer
from kdbench.models.tiny import general_packs
from kdbench.packs import DomainPack, load_pack
from kdbench.packs.trust import REPO_DOMAINS, check_pack_code

log = get_logger(__name__)

# kdbench's own packs: the embedded default's general corpus and its retention (forgetting) tasks
REPO_PACKS = sorted(p.name for p in REPO_DOMAINS.iterdir() if (p / "pack.yaml").is_file())


@dataclass
class EvalResult:
    model: str
    metrics: dict[str, dict[str, float]]  # task -> {metric: value, metric_stderr: value, n: count}
    samples_path: str
    seconds: float
    cached: bool = False


def tasks_for(pack, cfg) -> list[str]:
    """The tasks to evaluate on, once the run config may run the pack's code at all: preflight calls this, so a
    pack that is not trusted stops a run before anything is written."""
    check_pack_code(pack, cfg.trust_pack_code)
    return task_list(pack, cfg)


def task_list(pack, cfg) -> list[str]:
    """eval.tasks (checked against the pack's tasks) or all of them, and the public ones with eval.public."""
    tasks = cfg.eval.tasks or pack.task_names
    for t in tasks:
        if t not in pack.task_names:
            raise ConfigError(
                f"eval.tasks: {t!r} is not a task of pack {pack.name!r}{did_you_mean(t, pack.task_names)}; "
                f"its tasks: {pack.task_names}"
            )
    return list(tasks) + (list(pack.spec.public_tasks) if cfg.eval.public else [])


def _chat(ref: str, cfg) -> bool:
    if cfg.eval.apply_chat_template != "auto":
        return cfg.eval.apply_chat_template == "yes"
    tok = load_tokenizer(ref, revision=cfg.models.revision, trust_remote_code=cfg.models.trust_remote_code)
    return bool(getattr(tok, "chat_template", None))


def _metrics(results: dict) -> dict[str, dict[str, float]]:
    """lm-eval's {"acc,none": v, "acc_stderr,none": s, ...} -> {"acc": v, "acc_stderr": s}."""
    out = {}
    for task, vals in results.items():
        row = {}
        for k, v in vals.items():
            if "," not in k or not isinstance(v, (int, float)):
                continue
            name, filt = k.split(",", 1)
            row[name if filt == "none" else f"{name}.{filt}"] = float(v)
        out[task] = row
    return out


def _compact_samples(samples: dict) -> dict[str, list[dict]]:
    """Per task, per item: id, question, target, prediction, correct (for reports)."""
    out = {}
    for task, rows in samples.items():
        keep = []
        for s in rows:
            doc = s["doc"]
            item = {"doc_id": s["doc_id"], "id": doc.get("id"), "question": doc.get("question")}
            if "choices" in doc:
                lls = [r[0] for r in s["filtered_resps"]]
                pred = max(range(len(lls)), key=lls.__getitem__)
                item.update(
                    target=doc["choices"][doc["answer"]], prediction=doc["choices"][pred], correct=pred == doc["answer"]
                )
            else:
                resp = s["filtered_resps"][0]
                item.update(
                    target=doc.get("answer"),
                    prediction=resp if isinstance(resp, str) else resp[0],
                    correct=bool(s.get("exact_match", 0)),
                    rougeL=s.get("rougeL"),
                )
            keep.append(item)
        out[task] = keep
    return out


def stratified(items: list, limit: int, seed: str) -> list[int]:
    """Indices (in file order) of a fixed-seed sample of ``limit`` items, stratified by topic.

    Each topic gets its share of ``limit`` in proportion to its size (largest remainders round up, so the
    shares add up), and its items are drawn at random within it: a quick look sees every topic the task
    holds instead of the first few in file order.
    """
    if limit >= len(items):
        return list(range(len(items)))
    by_topic: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_topic.setdefault(getattr(it, "topic", "") or "", []).append(i)
    exact = {t: limit * len(ix) / len(items) for t, ix in by_topic.items()}
    share = {t: int(x) for t, x in exact.items()}
    for t in sorted(exact, key=lambda t: (-(exact[t] - share[t]), t))[: limit - sum(share.values())]:
        share[t] += 1
    rng = random.Random(seed)
    return sorted(i for t, ix in sorted(by_topic.items()) for i in rng.sample(ix, share[t]))


def chosen_samples(tasks: list[str], items: dict[str, list], limit: int | None) -> dict[str, list[int]] | None:
    """lm-eval's ``samples=`` for eval.limit: each pack task's stratified sample, a public task's first N."""
    if not limit:
        return None
    return {t: stratified(items[t], limit, f"{t}:{limit}") if t in items else list(range(limit)) for t in tasks}


def retention_tasks(pack, cfg) -> list[tuple[DomainPack | None, str]]:
    """(pack holding the task or None for a public lm-eval task, task) of the forgetting measurement.

    auto: with the embedded tiny student, the multiple-choice tasks of kdbench's other packs (what the student
    was pretrained on); otherwise none.
    """
    wanted = cfg.eval.retention
    if wanted == "auto":
        if TINY not in cfg.models.students:
            return []
        others = sorted(general_packs(pack, cfg.tiny), key=lambda p: p.name)  # what the tiny student learned
        return [(p, t.name) for p in others for t in p.spec.eval.tasks if t.kind == "multiple_choice"]
    own = {t.name: load_pack(p) for p in REPO_PACKS for t in load_pack(p).spec.eval.tasks}
    out = []
    for name in wanted:
        if name in pack.task_names:
            raise ConfigError(
                f"eval.retention: {name!r} is a task of pack {pack.name!r} itself; retention tasks "
                "measure what the student knew outside the pack"
            )
        out.append((own.get(name), name))
    return out


def checked_retention_tasks(pack, cfg) -> list[tuple[DomainPack | None, str]]:
    """retention_tasks, refused when a public one cannot be had (preflight calls this before any work)."""
    found = retention_tasks(pack, cfg)
    public = [t for p, t in found if p is None]
    if public and os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", ""):
        raise ConfigError(
            f"eval.retention: {', '.join(public)}: public lm-eval tasks need the Hugging Face hub, but this "
            "machine is offline (HF_DATASETS_OFFLINE=1); name tasks of kdbench's packs instead (e.g. medicine_mc)"
        )
    return found


def eval_key(model_ref: str, pack, cfg, tasks: list[str]) -> str:
    """What an evaluation's cached result is keyed by: the model, everything that decides the pack's scores
    (``pack.data_hash``), the tasks and the settings."""
    return content_hash(
        identity(model_ref, cfg.models.revision),
        pack.data_hash,
        tasks,
        cfg.eval.model_dump(exclude={"samples_per_task"}),
    )


def evaluate(model_ref: str, pack, cfg, home: Path, *, device: str = "cpu", label: str = "") -> EvalResult:
    tasks = tasks_for(pack, cfg)
    if cfg.eval.public and os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", ""):
        raise ConfigError(
            "--public needs the public datasets from the Hugging Face hub, but this machine is "
            "offline (HF_DATASETS_OFFLINE=1); run without --public or on a connected machine"
        )
    out = Path(home) / "evals" / f"{pack.name}-{eval_key(model_ref, pack, cfg, tasks)}"
    with locked(out):
        done = read_done(out / "result.json")
        if done is not None:
            return EvalResult(**{**done, "cached": True})
        items = {t: pack.eval_items[t] for t in tasks if t in pack.eval_items}
        return _run_lm_eval(model_ref, pack, cfg, tasks, out, device, label, [pack.eval_dir], items)


def evaluate_retention(model_ref: str, pack, cfg, home: Path, *, device: str = "cpu", label: str = "") -> EvalResult:
    """The model on the retention tasks (outside ``pack``; see retention_tasks): what distillation may make it
    forget. Metrics keyed by task, as evaluate's."""
    found = checked_retention_tasks(pack, cfg)
    tasks = [t for _, t in found]
    public = [t for p, t in found if p is None]
    owners = {t: p for p, t in found if p is not None}
    key = content_hash(
        "retention",
        identity(model_ref, cfg.models.revision),
        tasks,
        sorted({p.data_hash for p in owners.values()}),
        cfg.eval.model_dump(exclude={"samples_per_task"}),
    )
    out = Path(home) / "evals" / f"{pack.name}-retention-{key}"
    with locked(out):
        done = read_done(out / "result.json")
        if done is not None:
            return EvalResult(**{**done, "cached": True})
        dirs = list(dict.fromkeys(p.eval_dir for p in owners.values()))
        items = {t: p.eval_items[t] for t, p in owners.items()}
        return _run_lm_eval(
            model_ref, pack, cfg, tasks, out, device, f"{label} (retention)", dirs, items, public=bool(public)
        )


def _run_lm_eval(
    model_ref,
    pack,
    cfg,
    tasks,
    out: Path,
    device: str,
    label: str,
    include: list[Path],
    items: dict[str, list],
    *,
    public: bool | None = None,
) -> EvalResult:
    from lm_eval.evaluator import simple_evaluate  # what lm_eval.simple_evaluate loads lazily
    from lm_eval.tasks import TaskManager

    check_pack_code(pack, cfg.trust_pack_code)  # lm-eval imports the pack's Python below
    chat = _chat(model_ref, cfg)
    log.info(f"{pack.name}: evaluating {label or model_ref} on {', '.join(tasks)}{' (chat template)' if chat else ''}")
    public = cfg.eval.public if public is None else public
    tm = TaskManager(include_path=[str(d) for d in include], include_defaults=public)
    # a quick look (eval.limit): the same stratified sample of each task for every model (lm-eval's own limit
    # takes the first N items in file order, which on topic-sorted data sees a few topics only)
    chosen = chosen_samples(tasks, items, cfg.eval.limit)
    model_args = {
        "pretrained": model_ref,
        "dtype": cfg.models.dtype,
        "device": device,
        "trust_remote_code": cfg.models.trust_remote_code,
    }
    if cfg.models.revision and not Path(model_ref).exists():
        model_args["revision"] = cfg.models.revision
    t0 = time.perf_counter()
    try:
        with MODEL_LOCK:  # lm-eval makes its model inside (see MODEL_LOCK)
            res = simple_evaluate(
                model="hf",
                model_args=model_args,
                tasks=tasks,
                task_manager=tm,
                batch_size=cfg.eval.batch_size,
                samples=chosen,
                apply_chat_template=chat,
                log_samples=True,
                bootstrap_iters=0,
                gen_kwargs={"max_gen_toks": cfg.eval.max_gen_toks},
                random_seed=0,
                numpy_random_seed=0,
                torch_random_seed=0,
                fewshot_random_seed=0,
                verbosity="ERROR",
            )
    except Exception as e:  # lm-eval raises many types; keep the cause, name the model and tasks
        raise RuntimeFailure(f"lm-eval failed on {model_ref} ({', '.join(tasks)}): {type(e).__name__}: {e}") from e
    seconds = time.perf_counter() - t0
    if res is None or "results" not in res:  # lm-eval answers on its main process only (kdbench runs one)
        raise RuntimeFailure(f"lm-eval returned no results for {model_ref} ({', '.join(tasks)})")
    metrics = _metrics(res["results"])
    for task in tasks:
        if task in metrics:
            metrics[task]["n"] = float(res.get("n-samples", {}).get(task, {}).get("effective", 0))
    out.mkdir(parents=True, exist_ok=True)
    samples_path = out / "samples.json"
    samples_path.write_text(json.dumps(_compact_samples(res.get("samples", {})), ensure_ascii=False))
    result = EvalResult(model=model_ref, metrics=metrics, samples_path=str(samples_path), seconds=round(seconds, 2))
    write_json(out / "result.json", asdict(result))
    return result
