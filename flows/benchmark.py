"""The benchmark flow: several packs x algorithms x seeds, fanned out as concurrent
task runs (GPU-bound ones limited to the available slots), then one report
across the packs."""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.domain import summarize, wait_pack, where_to_look
from flows.tasks import check_crash_retries, report, submit_pack
from kdbench import tracking
from kdbench.config import RunConfig
from kdbench.log import get_logger
from kdbench.packs import load_pack
from kdbench.preflight import preflight

log = get_logger("flows")


# Prefect types flow(task_runner=) as TaskRunner[PrefectFuture], which its own ThreadPoolTaskRunner is not
@flow(name="kdbench-benchmark", persist_result=True, task_runner=ThreadPoolTaskRunner(max_workers=8))  # pyright: ignore[reportCallIssue, reportArgumentType]
def benchmark_flow(config: dict, packs: list[str]) -> dict:
    """``config``: a resolved RunConfig (its ``pack`` is replaced by each of ``packs``)."""
    check_crash_retries()
    rc = RunConfig.model_validate(config)
    config = rc.model_dump(mode="json")
    for ref in packs:  # every pack checked before any work starts
        preflight(RunConfig.model_validate({**config, "pack": ref}))
    names = [load_pack(p).name for p in packs]
    futures = {name: submit_pack({**config, "pack": ref}) for name, ref in zip(names, packs, strict=True)}
    done = {name: wait_pack(name, f) for name, f in futures.items()}
    per_pack = {name: report.submit({**config, "pack": ref}) for name, ref in zip(names, packs, strict=True)}
    overall = report.submit(config, names, "benchmark").result()
    for name, ref in zip(names, packs, strict=True):
        log.info(summarize(RunConfig.model_validate({**config, "pack": ref}), name, done[name]))
    uri = tracking.tracking_uri(rc)
    where_to_look(overall, uri, f"leaderboard across {', '.join(names)}")
    return {
        "packs": names,
        "report": overall,
        "pack_reports": {n: f.result() for n, f in per_pack.items()},
        "results": {n: [r.model_dump() for r in d["rows"]] for n, d in done.items()},
        "tracking_uri": uri,
    }
