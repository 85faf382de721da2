"""MLflow tracking: one experiment per pack, one run per result, never a duplicate.

Every run carries a ``kdbench.run_key`` tag: a content hash of what the run
measures. Opening a run looks that key up first, so a rerun after a crash
resumes the same MLflow run (tagged ``kdbench.resumed``) instead of leaving an
orphan beside a duplicate, and a finished run is not logged twice. A run that
raises is marked FAILED with the error (and the step, for a non-finite loss);
Ctrl-C marks it KILLED.

The default tracking URI is a SQLite file under the run home; set
``MLFLOW_TRACKING_URI`` or ``tracking.uri`` to use a server.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import kdbench
from kdbench import names
from kdbench.errors import NonFiniteLossError
from kdbench.locks import locked
from kdbench.metrics import flat_metrics

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def tracking_uri(cfg) -> str:
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{cfg.home_path / 'mlflow.db'}"


def ui_command(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri} --port 5000   # then open http://127.0.0.1:5000"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the checkout (with -dirty for local edits), else the package version."""
    try:
        root = Path(__file__).resolve().parents[1]
        sha = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{kdbench.__version__}+{sha}" if sha else kdbench.__version__
    except (OSError, subprocess.SubprocessError):
        return kdbench.__version__


def client(cfg):
    """A client bound to the run's tracking URI. (Not mlflow.set_tracking_uri: that also sets
    $MLFLOW_TRACKING_URI for the whole process, which would then override the next run's home.)"""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def experiment_name(cfg, pack: str) -> str:
    return f"{cfg.tracking.experiment_prefix}-{pack}"


def experiment_id(c, cfg, pack: str) -> str:
    """Get or create the pack's experiment; local stores keep artifacts under the home."""
    name = experiment_name(cfg, pack)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri(cfg).startswith("sqlite:"):
        location = (cfg.home_path / "mlartifacts" / pack).as_uri()
    try:
        return c.create_experiment(name, artifact_location=location, tags={names.tag(names.PACK): pack})
    except Exception:  # another process created it first (two runs at once)
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def find_run(c, exp_id: str, run_key: str):
    if not run_key.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"run keys are content hashes (letters, digits, - and _), got {run_key!r}")
    runs = c.search_runs(
        [exp_id],
        filter_string=f"tags.`{names.tag(names.RUN_KEY)}` = '{run_key}'",
        order_by=["attributes.start_time DESC"],
        max_results=5,
    )
    return runs[0] if runs else None


@contextmanager
def tracked_run(c, exp_id: str, run_key: str, name: str, tags: dict[str, str], lock_dir: Path | None = None):
    """Open (or resume) the run for ``run_key``; yields its id; sets its final status.

    With ``lock_dir``, finding-or-creating holds an inter-process lock on the key,
    so two processes starting the same run at once share one MLflow run.
    """
    if lock_dir is not None:
        with locked(Path(lock_dir) / run_key):
            run_id = _open_run(c, exp_id, run_key, name, tags)
    else:
        run_id = _open_run(c, exp_id, run_key, name, tags)
    try:
        yield run_id
    except KeyboardInterrupt:
        c.set_terminated(run_id, status="KILLED")
        raise
    except BaseException as e:
        c.set_tag(run_id, names.tag(names.ERROR), f"{type(e).__name__}: {e}"[:4000])
        if isinstance(e, NonFiniteLossError):
            c.set_tag(run_id, names.tag(names.FAILED_STEP), str(e.step))
            if e.checkpoint:
                c.set_tag(run_id, names.tag(names.LAST_CHECKPOINT), e.checkpoint)
        c.set_terminated(run_id, status="FAILED")
        raise
    else:
        c.set_terminated(run_id, status="FINISHED")


def _open_run(c, exp_id: str, run_key: str, name: str, tags: dict[str, str]) -> str:
    existing = find_run(c, exp_id, run_key)
    if existing is not None:
        run_id = existing.info.run_id
        if existing.info.status != "FINISHED":  # interrupted or failed before: this run takes it up again
            resumed = int(existing.data.tags.get(names.tag(names.RESUMED), "0")) + 1
            c.set_tag(run_id, names.tag(names.RESUMED), str(resumed))
            c.set_tag(run_id, names.tag(names.ERROR), "")
        c.update_run(run_id, status="RUNNING")
    else:
        run = c.create_run(
            exp_id,
            run_name=name,
            tags={**tags, names.tag(names.RUN_KEY): run_key, names.tag(names.CODE_VERSION): code_version()},
        )
        run_id = run.info.run_id
    return run_id


def log_all(
    c, run_id: str, *, params: dict | None = None, metrics: dict | None = None, tags: dict | None = None, step: int = 0
) -> None:
    """Batch-log params (stringified, 6000 chars max), metrics and tags."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    existing = c.get_run(run_id).data.params
    p = [Param(k, str(v)[:6000]) for k, v in (params or {}).items() if k not in existing]
    m = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items() if v is not None]
    t = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    for i in range(0, max(len(p), len(m), len(t)), 100):  # MLflow's batch limits
        c.log_batch(run_id, metrics=m[i : i + 100], params=p[i : i + 100], tags=t[i : i + 100])


# ---- what each kind of run records --------------------------------------------------


@dataclass
class Record:
    """Tags (set when the run is created), params and metrics of one run, and tags set when it is logged."""

    tags: dict[str, str]
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    late_tags: dict[str, str] = field(default_factory=dict)


def base_tags(pack, role: str) -> dict[str, str]:
    return {
        names.tag(names.PACK): pack.name,
        names.tag(names.PACK_VERSION): pack.spec.version,
        names.tag(names.PACK_DATA_HASH): pack.data_hash,
        names.tag(names.ROLE): role,
    }


def elicitation_record(pack, teacher: str, stats: dict, manifest: dict) -> Record:
    """The teacher data's run: sampling settings, prompts, counts, filter rates and the teacher's cost."""
    tags = {
        **base_tags(pack, names.ROLE_ELICITATION),
        names.tag(names.TEACHER): teacher,
        names.tag(names.DATA_HASH): manifest["data_hash"],
    }
    params = {
        "teacher": teacher,
        "backend": stats["backend"],
        "methods": ",".join(stats["methods"]),
        **{f"sampling.{k}": v for k, v in stats["sampling"].items()},
        **{f"{m}.system_prompt": pack.teacher_system(m) for m in stats["methods"]},
    }
    dropped = manifest["dropped"]
    metrics = {
        "dataset.rows": manifest["rows"],
        "dataset.rows_in": manifest["rows_in"],
        "decontam.rate": manifest["decontam_rate"],
        "teacher.generated_tokens": stats["teacher_generated_tokens"],
        "teacher.tokens": stats["teacher_tokens"],
        "teacher.outputs_reused": stats["teacher_outputs_reused"],
        # unknown when earlier runs' generations were reused: then not logged at all
        "teacher.seconds": stats["teacher_seconds"],
        **{f"dropped.{k}": v for k, v in dropped.items()},
        **{f"filter_rate.{k}": v / max(manifest["rows_in"], 1) for k, v in dropped.items()},
    }
    for method, st in stats["methods"].items():
        metrics.update({f"{method}.{k}": v for k, v in st.items() if isinstance(v, (int, float))})
    return Record(tags, params, metrics)


def baseline_record(pack, role: str, model: str, res, data_hash: str, tasks: list[str]) -> Record:
    """A teacher or student-before evaluation."""
    who = names.TEACHER if role == names.ROLE_TEACHER else names.STUDENT
    tags = {**base_tags(pack, role), names.tag(who): model, names.tag(names.DATA_HASH): data_hash}
    return Record(
        tags,
        {"model": model, "eval.tasks": ",".join(tasks)},
        {**flat_metrics(res.metrics), names.EVAL_SECONDS: res.seconds},
    )


def student_tags(pack, teacher: str, student: str, algorithm: str, seed: int, data_hash: str) -> dict[str, str]:
    return {
        **base_tags(pack, names.ROLE_AFTER),
        names.tag(names.TEACHER): teacher,
        names.tag(names.STUDENT): student,
        names.tag(names.ALGORITHM): algorithm,
        names.tag(names.SEED): str(seed),
        names.tag(names.DATA_HASH): data_hash,
    }


def student_record(
    res, ev, metrics: dict, data, info, train_cfg: dict, used: dict | None, links: dict[str, str]
) -> Record:
    """A distilled student: scores and gaps (``metrics``), costs, the algorithm's and training's settings, and
    links to the runs it came from. ``used``: this process's CPU and wall seconds while it trained (None when the
    student was reused from an earlier run)."""
    costs = {
        names.COST_TRAIN_TOKENS: res.train_tokens,
        names.COST_TRAIN_SECONDS: res.seconds,
        names.COST_TOKENS_PER_S: res.tokens_per_s,
        names.COST_PEAK_MEM_MB: res.peak_mem_mb,
        names.COST_EVAL_SECONDS: ev.seconds,
        names.FINAL_LOSS: res.final_loss,
        names.COST_TEACHER_TOKENS: data.teacher_tokens,
        names.COST_TEACHER_SECONDS: data.teacher_seconds,
    }  # None (not logged) when not measured here
    if used is not None:
        costs.update(
            {
                names.COST_CPU_SECONDS: used["cpu_seconds"],
                names.COST_WALL_SECONDS: used["wall_seconds"],
                names.COST_GPU_SECONDS: used["wall_seconds"] if used["on_gpu"] else 0.0,
            }
        )
    params = {
        "algorithm": res.algorithm,
        "seed": res.seed,
        "dataset.rows": info.manifest["rows"],
        "dataset.path": str(info.path),
        **{f"hp.{k}": v for k, v in (res.hparams or {}).items()},
        **{f"train.{k}": v for k, v in train_cfg.items()},
    }
    late = {**{names.tag(k): v for k, v in links.items()}, names.tag(names.MODEL_DIR): res.model_dir}
    return Record({}, params, {**metrics, **costs}, late)


def log_record(
    c,
    run_id: str,
    record: Record,
    *,
    config_yaml: str,
    artifacts: Sequence[str] = (),
    dicts: dict[str, dict] | None = None,
) -> None:
    """Log a record, the resolved config (config.yaml), artifacts and JSON dicts to the run."""
    log_all(c, run_id, params=record.params, metrics=record.metrics, tags=record.late_tags)
    for path in artifacts:
        c.log_artifact(run_id, path)
    for name, d in (dicts or {}).items():
        c.log_dict(run_id, d, name)
    c.log_text(run_id, config_yaml, "config.yaml")


def merged_samples(samples: str, retention: str | None, folder: Path) -> str:
    """One samples.json for a run: its pack tasks' items and, when it was scored on retention tasks, theirs
    (under their own task names), written into ``folder``; the report reads every task's items from it."""
    if retention is None:
        return samples
    merged = {
        **json.loads(Path(samples).read_text(encoding="utf-8")),
        **json.loads(Path(retention).read_text(encoding="utf-8")),
    }
    out = Path(folder) / "samples.json"
    out.write_text(json.dumps(merged, ensure_ascii=False), encoding="utf-8")
    return str(out)
