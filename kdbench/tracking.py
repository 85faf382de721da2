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
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import kdbench
from kdbench import names
from kdbench.errors import NonFiniteLossError, UserError
from kdbench.locks import locked
from kdbench.log import get_logger
from kdbench.metrics import flat_metrics

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
log = get_logger(__name__)


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
    return open_client(tracking_uri(cfg))


# ---- the SQLite store: created once, repaired, or refused with what to do -------------------

_ready: set[str] = set()  # SQLite URIs this process has checked (and MLflow has set up)
_ready_lock = threading.Lock()


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI (None for other stores and in-memory databases)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def open_client(uri: str):
    """An MlflowClient for ``uri``; a SQLite store is checked, created and migrated first, once per process.

    Creating a SQLite store runs MLflow's migrations, which two processes must never run at once: two
    first runs on a fresh home did, and left the file half-migrated (leftover ``_alembic_tmp_*`` tables, a
    schema version behind) so that every later run on it failed. Here one process does it under an
    inter-process lock (``mlflow.db.lock`` beside the file) while the others wait, then find it ready.
    A store left half-migrated by an earlier crash is repaired (see :func:`_check_sqlite`); one that
    cannot be is refused in one line naming the file and what to do.
    """
    from mlflow.tracking import MlflowClient

    db = sqlite_path(uri)
    if db is None or uri in _ready:
        return MlflowClient(tracking_uri=uri)
    with _ready_lock, ExitStack() as held:  # the threads of one run wait here, other processes on the file lock
        if uri not in _ready:
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
                held.enter_context(locked(db))
                writable = True
            except OSError:  # a read-only folder (a report on someone else's home): check, never write
                writable = False
            _check_sqlite(db, uri, repair=writable)
            c = MlflowClient(tracking_uri=uri)  # MLflow creates and migrates a new store here, once
            _ready.add(uri)
            return c
    return MlflowClient(tracking_uri=uri)


def _broken(db: Path, reason: str) -> UserError:
    return UserError(
        f"{db} is not a readable SQLite database ({reason}): it is an MLflow tracking store. Move it aside "
        f"(mv {db} {db}.broken) to start a new, empty store, or restore it from a backup; then rerun."
    )


def _check_sqlite(db: Path, uri: str, *, repair: bool) -> None:
    """Refuse a file that is not a whole SQLite database; finish (or refuse) a half-done MLflow migration.

    Half-migrated means leftover ``_alembic_tmp_*`` tables (SQLite migrations copy a table into one,
    then drop and rename) or a schema revision behind the installed MLflow's. The repair drops leftover
    copies whose table still exists and runs MLflow's own upgrade, after a backup of a store holding
    runs; a store holding no runs is set aside and created anew when the upgrade still fails.
    """
    import sqlite3

    if not db.exists() or db.stat().st_size == 0:
        return  # a new store: MLflow creates it
    with db.open("rb") as f:
        header = f.read(100)
    if not header.startswith(b"SQLite format 3\x00"):
        raise _broken(db, "it does not start with the SQLite header")
    try:
        with closing(sqlite3.connect(db)) as con:  # a first query also rolls back a crashed writer's journal
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            page_size, pages = (con.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "page_count"))
            if db.stat().st_size < 256 * 2**20:  # a full read of a team's large store costs too much
                problems = [r[0] for r in con.execute("PRAGMA quick_check(3)")]
                if problems != ["ok"]:
                    raise _broken(db, "; ".join(problems)[:200])
            version = None
            if "alembic_version" in tables:
                row = con.execute("SELECT version_num FROM alembic_version").fetchone()
                version = row[0] if row else None
            runs_table = next((t for t in ("runs", "_alembic_tmp_runs") if t in tables), None)  # a migration's copy
            runs = con.execute(f"SELECT count(*) FROM {runs_table}").fetchone()[0] if runs_table else 0
    except sqlite3.DatabaseError as e:
        raise _broken(db, str(e)) from None
    if len(header) == 100 and header[24:28] == header[92:96]:  # the header's page count is valid: compare
        expected = int.from_bytes(header[28:32], "big") * page_size
        if pages and db.stat().st_size < expected:
            raise _broken(db, f"truncated: {db.stat().st_size} bytes of {expected}")

    from mlflow.store.db import utils as db_utils

    head = db_utils._get_latest_schema_revision()
    leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
    if not leftovers and (version == head or not tables - {"alembic_version"}):
        return  # ready, or empty (MLflow creates the tables)
    what = ", ".join(
        ([f"leftover tables {', '.join(leftovers)}"] if leftovers else [])
        + [f"schema revision {version or 'none'}, MLflow {_mlflow_version()} expects {head}"]
    )
    if version is not None and not _known_revision(version):
        raise UserError(
            f"{db}: this MLflow store was written by a newer MLflow (schema revision {version} is unknown to "
            f"the installed MLflow {_mlflow_version()}); use that MLflow's kdbench environment, or another --home."
        )
    if not repair:
        raise UserError(
            f"{db}: the MLflow store is half-migrated ({what}) and its folder is not writable, so it cannot "
            "be repaired here; run `kdbench run` (or `mlflow db upgrade`) on it where it is writable."
        )
    backup = None
    if runs:
        backup = db.with_name(f"{db.name}.before-repair-{time.strftime('%Y%m%d-%H%M%S')}")
        with closing(sqlite3.connect(db)) as src, closing(sqlite3.connect(backup)) as dst:
            src.backup(dst)
    log.warning(f"the MLflow store {db} is half-migrated ({what}); repairing it")
    try:
        _finish_migration(db, uri, leftovers, tables)
    except Exception as e:  # noqa: BLE001  (sqlite, alembic and MLflow errors alike)
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        if runs:
            raise UserError(
                f"{db}: the MLflow store is half-migrated ({what}) and the repair failed ({reason}); a copy "
                f"made before the repair is {backup}. Restore a backup of {db.name}, or move it aside "
                "(its runs then leave the reports) to start a new store."
            ) from None
        aside = db.with_name(f"{db.name}.half-migrated-{time.strftime('%Y%m%d-%H%M%S')}")
        db.rename(aside)
        log.warning(f"the repair failed ({reason}); the store held no runs: moved to {aside.name}, a new one is made")
        return
    log.info(f"repaired the MLflow store {db}" + (f" (a copy from before: {backup})" if backup else ""))


def _finish_migration(db: Path, uri: str, leftovers: list[str], tables: set[str]) -> None:
    """Drop leftover migration copies of tables that still exist; run MLflow's create-and-upgrade."""
    import sqlite3

    from mlflow.store.db import utils as db_utils

    orphans = [t for t in leftovers if t.removeprefix("_alembic_tmp_") not in tables]
    if orphans:  # the original table is gone and its rows are in the copy: no safe automatic repair
        raise RuntimeError(f"{', '.join(orphans)} hold the only copy of their table")
    with closing(sqlite3.connect(db)) as con:
        for t in leftovers:
            con.execute(f'DROP TABLE "{t}"')
        con.commit()
    engine = db_utils.create_sqlalchemy_engine_with_retry(uri)
    try:
        db_utils._initialize_tables(engine)  # what MLflow runs on a new store: create what is missing, upgrade
        if db_utils._get_schema_version(engine) != db_utils._get_latest_schema_revision():
            raise RuntimeError("the upgrade did not reach the latest revision")
    finally:
        engine.dispose()


def _known_revision(rev: str) -> bool:
    from alembic.script import ScriptDirectory
    from mlflow.store.db import utils as db_utils

    try:
        return ScriptDirectory.from_config(db_utils._get_alembic_config("")).get_revision(rev) is not None
    except Exception:  # noqa: BLE001  (alembic's ResolutionError and friends)
        return False


def _mlflow_version() -> str:
    import mlflow

    return mlflow.__version__


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
