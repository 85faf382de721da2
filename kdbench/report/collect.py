"""Read kdbench runs out of MLflow into one pandas DataFrame (a row per run)."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd

from kdbench import tracking


def collect_runs(cfg, packs: list[str] | None = None, algorithms: list[str] | None = None,
                 since: str | None = None) -> pd.DataFrame:
    """Finished kdbench runs of the given packs (default: every kdbench experiment).

    Columns: run_id, experiment_id, status, start_time, the kdbench.* tags without
    their prefix (pack, role, algorithm, seed, teacher, student, ...), every metric
    as ``m:<name>`` and every param as ``p:<name>``.
    """
    c = tracking.client(cfg)
    prefix = f"{cfg.tracking.experiment_prefix}-"
    exps = [e for e in c.search_experiments(max_results=1000) if e.name.startswith(prefix)]
    if packs:
        exps = [e for e in exps if e.name.removeprefix(prefix) in packs]
    if not exps:
        return pd.DataFrame()
    filters = ["attributes.status = 'FINISHED'"]
    if since:
        t = datetime.fromisoformat(since)
        t = t if t.tzinfo else t.replace(tzinfo=timezone.utc)
        filters.append(f"attributes.start_time >= {int(t.timestamp() * 1000)}")
    runs, token = [], None
    while True:
        page = c.search_runs([e.experiment_id for e in exps], filter_string=" and ".join(filters),
                             max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    rows = []
    for r in runs:
        row = {"run_id": r.info.run_id, "experiment_id": r.info.experiment_id, "status": r.info.status,
               "start_time": pd.Timestamp(r.info.start_time, unit="ms", tz="UTC"),
               "end_time": pd.Timestamp(r.info.end_time, unit="ms", tz="UTC") if r.info.end_time else None,
               "run_name": r.info.run_name}
        row.update({k.removeprefix("kdbench."): v for k, v in r.data.tags.items() if k.startswith("kdbench.")})
        row.update({f"m:{k}": v for k, v in r.data.metrics.items()})
        row.update({f"p:{k}": v for k, v in r.data.params.items()})
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty or "role" not in df:
        return pd.DataFrame()
    df = df[df["role"].isin(["teacher", "student_before", "student_after"])]
    if algorithms:
        df = df[(df["role"] != "student_after") | df["algorithm"].isin(algorithms)]
    return df.reset_index(drop=True)
