"""The SQLite tracking store: created once by concurrent first runs, repaired when half-migrated, refused in
one line when it is not a database (tracking.open_client)."""

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from kdbench import tracking
from kdbench.cli import main
from kdbench.errors import UserError

REPO = Path(__file__).resolve().parents[1]
# the revision a real race of four first runs left a store at, beside three _alembic_tmp_* tables
HALF_WAY = "a8c4a736bde6"

CREATE = """
import sys
from kdbench import tracking
c = tracking.open_client(sys.argv[1])
exp = c.get_experiment_by_name("kdbench-geo")
if exp is None:
    try:
        exp_id = c.create_experiment("kdbench-geo")
    except Exception:  # another process created it first
        exp_id = c.get_experiment_by_name("kdbench-geo").experiment_id
else:
    exp_id = exp.experiment_id
run = c.create_run(exp_id)
c.log_metric(run.info.run_id, "m", 1.0)
c.set_terminated(run.info.run_id)
"""


def _tables(db: Path) -> set[str]:
    with closing(sqlite3.connect(db)) as con:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _revision(db: Path) -> str:
    with closing(sqlite3.connect(db)) as con:
        return con.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def _head() -> str:
    from mlflow.store.db import utils as db_utils

    return db_utils._get_latest_schema_revision()


def _uri(db: Path) -> str:
    return f"sqlite:///{db}"


@pytest.mark.slow
def test_concurrent_first_runs_create_one_usable_store(tmp_path):
    """Four processes open one fresh home's store at once, three times over: all succeed, once migrated."""
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    for attempt in range(3):
        db = tmp_path / f"home{attempt}" / "mlflow.db"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CREATE, _uri(db)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(4)
        ]
        outs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, "\n\n".join(o[-2000:] for o in outs)
        assert not {t for t in _tables(db) if t.startswith("_alembic_tmp_")} and _revision(db) == _head()
        c = MlflowClient(_uri(db))
        exp = c.get_experiment_by_name("kdbench-geo")
        assert exp is not None
        runs = c.search_runs([exp.experiment_id])
        assert len(runs) == 4 and all(r.info.status == "FINISHED" and r.data.metrics["m"] == 1.0 for r in runs)


def _half_migrated(db: Path, *, run: bool, orphan: bool = False) -> None:
    """A store that stopped half-way through MLflow's migrations: schema revision HALF_WAY, and a leftover
    _alembic_tmp_runs copy (as SQLite batch migrations make) beside runs, or instead of it (``orphan``)."""
    from alembic import command
    from mlflow.store.db import utils as db_utils
    from mlflow.store.db.utils import create_sqlalchemy_engine_with_retry
    from mlflow.store.tracking.dbmodels.initial_models import Base

    db.parent.mkdir(parents=True, exist_ok=True)
    engine = create_sqlalchemy_engine_with_retry(_uri(db))
    Base.metadata.create_all(engine)
    config = db_utils._get_alembic_config(_uri(db))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, HALF_WAY)
    engine.dispose()
    with closing(sqlite3.connect(db)) as con:
        con.execute(
            "INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage) "
            f"VALUES (1, 'kdbench-geo', '{db.parent / 'art'}', 'active')"
        )
        if run:
            con.execute(
                "INSERT INTO runs (run_uuid, name, user_id, source_type, source_name, status, start_time, "
                "lifecycle_stage, artifact_uri, experiment_id) VALUES (lower(hex(randomblob(16))), 'old', 'kd', "
                "'LOCAL', '', 'FINISHED', 1, 'active', '/tmp/art', 1)"
            )
        con.execute("CREATE TABLE _alembic_tmp_runs AS SELECT * FROM runs")
        if orphan:
            con.execute("DROP TABLE runs")
        con.commit()


def test_half_migrated_store_is_repaired(tmp_path, capsys):
    db = tmp_path / "home" / "mlflow.db"
    _half_migrated(db, run=True)
    assert "_alembic_tmp_runs" in _tables(db) and _revision(db) == HALF_WAY
    c = tracking.open_client(_uri(db))
    assert "_alembic_tmp_runs" not in _tables(db) and _revision(db) == _head()
    exp = c.get_experiment_by_name("kdbench-geo")
    assert exp is not None
    old = c.search_runs([exp.experiment_id])
    assert [r.info.run_name for r in old] == ["old"]  # the store's runs survive the repair
    run = c.create_run(exp.experiment_id)  # and it takes new ones
    c.log_metric(run.info.run_id, "m", 2.0)
    assert c.get_run(run.info.run_id).data.metrics == {"m": 2.0}
    out = capsys.readouterr().out
    assert f"the MLflow store {db} is half-migrated (leftover tables _alembic_tmp_runs, schema revision " in out
    assert f"repaired the MLflow store {db} (a copy from before: " in out
    assert len(list(db.parent.glob("mlflow.db.before-repair-*"))) == 1


def test_half_migrated_store_that_cannot_be_repaired_is_refused_clearly(tmp_path):
    """The only copy of a table is a migration's leftover: with runs in it, nothing is guessed."""
    db = tmp_path / "home" / "mlflow.db"
    _half_migrated(db, run=True, orphan=True)
    with pytest.raises(UserError) as e:
        tracking.open_client(_uri(db))
    msg = str(e.value)
    assert msg.startswith(f"{db}: the MLflow store is half-migrated (leftover tables _alembic_tmp_runs, schema ")
    assert "the repair failed (RuntimeError: _alembic_tmp_runs hold the only copy of their table)" in msg
    assert "Restore a backup of mlflow.db, or move it aside" in msg and "\n" not in msg


def test_half_migrated_store_without_runs_is_set_aside_and_made_anew(tmp_path, capsys):
    db = tmp_path / "home" / "mlflow.db"
    _half_migrated(db, run=False, orphan=True)
    c = tracking.open_client(_uri(db))
    assert c.get_experiment_by_name("kdbench-geo") is None and _revision(db) == _head()
    assert len(list(db.parent.glob("mlflow.db.half-migrated-*"))) == 1
    assert "the store held no runs: moved to mlflow.db.half-migrated-" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncated", "not sqlite"])
def test_broken_store_gives_one_line_naming_the_file(tmp_path, capsys, damage):
    home = tmp_path / "home"
    db = home / "mlflow.db"
    from mlflow.entities import Metric

    c = tracking.open_client(_uri(db))
    exp = c.create_experiment("kdbench-law")
    for _ in range(10):  # a store of some size, so that half of it is a truncated database
        run = c.create_run(exp)
        c.log_batch(run.info.run_id, metrics=[Metric("train.loss", 0.1 * s, 0, s) for s in range(100)])
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"mlflow runs\n" * 100)
    tracking._ready.clear()  # as a new process would
    capsys.readouterr()
    assert main(["report", "--pack", "law", "--home", str(home), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kdbench: error: {db} is not a readable SQLite database (") and "\n" not in err
    assert f"Move it aside (mv {db} {db}.broken) to start a new, empty store, or restore it from a backup" in err
