"""Read kdbench runs out of MLflow into one pandas DataFrame (a row per run).

Bad filters fail here with a message saying what exists: a pack with no runs in
the tracking store (and the packs that have some), a ``since`` that is not a
date, a tracking URI that cannot be reached.
"""

# pandas types df[mask], df[col] and .loc[...] as Series | ndarray | scalar unions, so these rules
# report pandas idioms here, not bugs
# pyright: reportAttributeAccessIssue=false, reportReturnType=false

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from kdbench import names, tracking
from kdbench.errors import RuntimeFailure, UserError, did_you_mean

if TYPE_CHECKING:  # mlflow is imported when a report is made, not with this module
    from mlflow.entities import Experiment
    from mlflow.tracking import MlflowClient

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in reports

ROLES = names.ROLES


def parse_since(since: str | None) -> datetime | None:
    """An ISO date or date-time (UTC unless it says otherwise), or a clear error."""
    if not since:
        return None
    try:
        t = datetime.fromisoformat(since.strip())
    except ValueError:
        raise UserError(
            f"--since {since!r} is not a date; use ISO format, e.g. 2026-11-01 or 2026-11-01T14:30"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def read_client(cfg):
    """A client for the tracking store, refusing to create an empty SQLite file by reading it (a half-migrated
    one is repaired first, or refused with what to do: see tracking.open_client)."""
    uri = tracking.tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if db.is_dir():
            raise UserError(
                f"{db} (tracking URI {uri}) is a folder, where the MLflow SQLite database should be a file; "
                "move it aside, or pass --tracking-uri with the store the runs went to"
            )
        if not db.is_file():
            raise UserError(
                f"no MLflow database at {db} (tracking URI {uri}); run `kdbench run <pack>` "
                "first, or point --home or --tracking-uri at the store that holds the runs"
            )
    return tracking.open_client(uri), uri


def pack_experiments(cfg) -> tuple[MlflowClient, str, dict[str, Experiment]]:
    """(client, uri, {pack: experiment}) for every kdbench experiment in the tracking store."""
    c, uri = read_client(cfg)
    prefix = f"{cfg.tracking.experiment_prefix}-"
    try:
        exps = c.search_experiments(max_results=1000)
    except Exception as e:  # noqa: BLE001  (MlflowException, requests' ConnectionError, sqlite errors, ...)
        raise RuntimeFailure(
            f"cannot read the MLflow tracking store at {uri}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}\nIs the server running and the URI "
            "right? (--tracking-uri, $MLFLOW_TRACKING_URI, or --home for the local SQLite file)"
        ) from None
    return c, uri, {e.name.removeprefix(prefix): e for e in exps if e.name.startswith(prefix)}


def collect_runs(
    cfg, packs: list[str] | None = None, algorithms: list[str] | None = None, since: str | None = None
) -> pd.DataFrame:
    """Finished kdbench runs of the given packs (default: every kdbench experiment).

    Columns: run_id, experiment_id, status, start_time, end_time, run_name, the
    kdbench.* tags without their prefix (pack, role, algorithm, seed, teacher,
    student, ...), every metric as ``m:<name>`` and every param as ``p:<name>``.
    Rows: teacher, student_before, student_after and elicitation runs.
    """
    t_since = parse_since(since)
    c, uri, found = pack_experiments(cfg)
    for p in packs or []:
        if p not in found:
            have = ", ".join(sorted(found)) or "none"
            raise UserError(
                f"unknown pack {p!r} in --pack{did_you_mean(p, found)}: the tracking store {uri} "
                f"has runs of these packs: {have}"
            )
    exps = [found[p] for p in (packs or sorted(found))]
    if not exps:
        return pd.DataFrame()
    filters = ["attributes.status = 'FINISHED'"]
    if t_since:
        filters.append(f"attributes.start_time >= {int(t_since.timestamp() * 1000)}")
    runs, token = [], None
    while True:
        page = c.search_runs(
            [e.experiment_id for e in exps], filter_string=" and ".join(filters), max_results=1000, page_token=token
        )
        runs += list(page)
        token = page.token
        if not token:
            break
    rows = []
    for r in runs:
        row = {
            "run_id": r.info.run_id,
            "experiment_id": r.info.experiment_id,
            "status": r.info.status,
            "start_time": pd.Timestamp(r.info.start_time, unit="ms", tz="UTC"),
            "end_time": pd.Timestamp(r.info.end_time, unit="ms", tz="UTC") if r.info.end_time else None,
            "run_name": r.info.run_name,
        }
        row.update({k.removeprefix("kdbench."): v for k, v in r.data.tags.items() if k.startswith("kdbench.")})
        row.update({f"m:{k}": v for k, v in r.data.metrics.items()})
        row.update({f"p:{k}": v for k, v in r.data.params.items()})
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty or names.ROLE not in df:
        return pd.DataFrame()
    df = df[df[names.ROLE].isin(ROLES)]
    if algorithms:
        have = set(df[names.ALGORITHM].dropna()) if names.ALGORITHM in df else set()
        missing = [a for a in algorithms if a not in have]
        if missing:
            raise UserError(
                f"no finished runs of algorithm(s) {', '.join(missing)} in the selected packs "
                f"({', '.join(e.name for e in exps)}); algorithms found: {', '.join(sorted(have)) or 'none'}"
            )
        df = df[(df[names.ROLE] != names.ROLE_AFTER) | df[names.ALGORITHM].isin(algorithms)]
    return df.reset_index(drop=True)


def load_samples(c, run_ids: list[str]) -> dict[str, dict]:
    """{run_id: samples.json} for the runs that have the artifact (others are left out)."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="kdbench-samples-") as tmp:
        for rid in dict.fromkeys(run_ids):
            try:
                path = c.download_artifacts(rid, "samples.json", str(Path(tmp) / rid))
                out[rid] = json.loads(Path(path).read_text(encoding="utf-8"))
            except Exception:  # noqa: BLE001, S112  (an older run without samples, an unreadable store)
                continue
    return out
