"""The domain flow: one vertical, end to end, as a Prefect flow.

load pack -> teacher and students -> elicit -> dataset -> baselines (teacher,
each student before) -> distill + evaluate each (student, algorithm, seed) ->
report. The graph is submitted at once (flows/tasks.py); independent branches
run as concurrent task runs, heavy ones one GPU slot at a time.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.tasks import cached_note, check_crash_retries, report, submit_pack
from kdbench import steps, tracking
from kdbench.config import RunConfig
from kdbench.log import get_logger
from kdbench.packs import load_pack
from kdbench.preflight import preflight

log = get_logger("flows")


def wait_pack(pack: str, futures: dict) -> dict:
    """Wait for one pack's futures; say what Prefect served from its cache."""
    done = {k: futures[k].result() for k in ("models", "elicited", "data", "teacher")}
    done["befores"] = [f.result() for f in futures["befores"]]
    done["rows"] = [f.result() for f in futures["rows"]]
    for k, label in [
        ("models", "models"),
        ("elicited", "elicitation"),
        ("data", "dataset"),
        ("teacher", "teacher evaluation"),
    ]:
        cached_note(futures[k], f"{pack}: {label}")
    for i, f in enumerate(futures["befores"]):
        cached_note(
            f, f"{pack}: student-before evaluation" + (f" (student {i})" if len(futures["befores"]) > 1 else "")
        )
    for f, r in zip(futures["rows"], done["rows"], strict=True):
        cached_note(f, f"{pack}: {r.algorithm} seed {r.seed}")
    return done


def summarize(rc: RunConfig, pack_name: str, done: dict) -> str:
    p = load_pack(rc.pack)
    task0 = rc.eval.tasks[0] if rc.eval.tasks else p.task_names[0]
    return steps.summary_line(pack_name, done["rows"], done["teacher"], done["befores"], task0, p.task(task0).metric)


def where_to_look(paths: dict, uri: str, label: str = "leaderboard") -> None:
    log.info(
        f"{label}: {Path(paths['markdown']).resolve()}"
        + (f" (and {Path(paths['html']).resolve()})" if paths.get("html") else "")
    )
    log.info(f"MLflow runs: {uri}")
    log.info(f"open the UI: {tracking.ui_command(uri)}")


# Prefect types flow(task_runner=) as TaskRunner[PrefectFuture], which its own ThreadPoolTaskRunner is not
@flow(name="kdbench-domain", persist_result=True, task_runner=ThreadPoolTaskRunner(max_workers=4))  # pyright: ignore[reportCallIssue, reportArgumentType]
def domain_flow(config: dict) -> dict:
    """Run the benchmark for one pack; ``config`` is a resolved RunConfig as a dict."""
    check_crash_retries()
    rc = RunConfig.model_validate(config)
    preflight(rc)
    config = rc.model_dump(mode="json")  # a partial config (a deployment's parameters) gets every default
    pack = load_pack(rc.pack).name
    log.info(
        f"{pack}: submitting models -> elicitation ({', '.join(rc.elicit.methods)}) -> dataset -> baselines "
        f"-> {', '.join(rc.distill.algorithms)} x seeds {rc.distill.seeds} -> report"
    )
    done = wait_pack(pack, submit_pack(config))
    paths = report.submit(config).result()
    uri = tracking.tracking_uri(rc)
    log.info(summarize(rc, pack, done))
    where_to_look(paths, uri)
    return {
        "pack": pack,
        "report": paths,
        "results": [r.model_dump() for r in done["rows"]],
        "teacher": done["teacher"].metrics,
        "student_before": [b.metrics for b in done["befores"]],
        "tracking_uri": uri,
    }
