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
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from kdbench.errors import NonFiniteLossError

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

TAG = "kdbench"


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
    import kdbench

    try:
        root = Path(__file__).resolve().parents[1]
        sha = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
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
        return c.create_experiment(name, artifact_location=location, tags={f"{TAG}.pack": pack})
    except Exception:  # another process created it first (two runs at once)
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def find_run(c, exp_id: str, run_key: str):
    if not run_key.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"run keys are content hashes (letters, digits, - and _), got {run_key!r}")
    runs = c.search_runs([exp_id], filter_string=f"tags.`{TAG}.run_key` = '{run_key}'",
                         order_by=["attributes.start_time DESC"], max_results=5)
    return runs[0] if runs else None


@contextmanager
def tracked_run(c, exp_id: str, run_key: str, name: str, tags: dict[str, str], lock_dir: Path | None = None):
    """Open (or resume) the run for ``run_key``; yields its id; sets its final status.

    With ``lock_dir``, finding-or-creating holds an inter-process lock on the key,
    so two processes starting the same run at once share one MLflow run.
    """
    from kdbench.locks import locked

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
        c.set_tag(run_id, f"{TAG}.error", f"{type(e).__name__}: {e}"[:4000])
        if isinstance(e, NonFiniteLossError):
            c.set_tag(run_id, f"{TAG}.failed_step", str(e.step))
            if e.checkpoint:
                c.set_tag(run_id, f"{TAG}.last_checkpoint", e.checkpoint)
        c.set_terminated(run_id, status="FAILED")
        raise
    else:
        c.set_terminated(run_id, status="FINISHED")


def _open_run(c, exp_id: str, run_key: str, name: str, tags: dict[str, str]) -> str:
    existing = find_run(c, exp_id, run_key)
    if existing is not None:
        run_id = existing.info.run_id
        if existing.info.status != "FINISHED":  # interrupted or failed before: this run takes it up again
            resumed = int(existing.data.tags.get(f"{TAG}.resumed", "0")) + 1
            c.set_tag(run_id, f"{TAG}.resumed", str(resumed))
            c.set_tag(run_id, f"{TAG}.error", "")
        c.update_run(run_id, status="RUNNING")
    else:
        run = c.create_run(exp_id, run_name=name, tags={**tags, f"{TAG}.run_key": run_key,
                                                        f"{TAG}.code_version": code_version()})
        run_id = run.info.run_id
    return run_id


def log_all(c, run_id: str, *, params: dict | None = None, metrics: dict | None = None,
            tags: dict | None = None, step: int = 0) -> None:
    """Batch-log params (stringified, 6000 chars max), metrics and tags."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    existing = c.get_run(run_id).data.params
    p = [Param(k, str(v)[:6000]) for k, v in (params or {}).items() if k not in existing]
    m = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items() if v is not None]
    t = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    for i in range(0, max(len(p), len(m), len(t)), 100):  # MLflow's batch limits
        c.log_batch(run_id, metrics=m[i : i + 100], params=p[i : i + 100], tags=t[i : i + 100])


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
