"""The domain flow: one vertical, end to end, as a Prefect flow.

load pack -> teacher and students -> elicit -> dataset -> baselines (teacher,
student before) -> distill + evaluate each (student, algorithm, seed) -> report.
The graph is submitted at once (flows/tasks.py); independent branches run as
concurrent task runs, heavy ones one GPU slot at a time.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.tasks import cached_note, report, submit_pack
from kdbench import steps, tracking
from kdbench.config import RunConfig
from kdbench.preflight import preflight
from kdbench.packs import load_pack


def wait_pack(pack: str, futures: dict) -> dict:
    """Wait for one pack's futures; say what Prefect served from its cache."""
    results = {k: futures[k].result() for k in ("models", "elicited", "data", "teacher", "before")}
    rows = [f.result() for f in futures["rows"]]
    for k, label in [("models", "models"), ("elicited", "elicitation"), ("data", "dataset"),
                     ("teacher", "teacher evaluation"), ("before", "student-before evaluation")]:
        cached_note(futures[k], f"{pack}: {label}")
    for f, r in zip(futures["rows"], rows, strict=True):
        cached_note(f, f"{pack}: {r['algorithm']} seed {r['seed']}")
    return {**results, "rows": rows}


def summarize(rc: RunConfig, pack_name: str, done: dict) -> None:
    p = load_pack(rc.pack)
    task0 = rc.eval.tasks[0] if rc.eval.tasks else p.task_names[0]
    print(steps.summary_line(pack_name, done["rows"], done["teacher"], done["before"], task0, p.task(task0).metric))


@flow(name="kdbench-domain", persist_result=True, task_runner=ThreadPoolTaskRunner(max_workers=4))
def domain_flow(config: dict) -> dict:
    """Run the benchmark for one pack; ``config`` is a resolved RunConfig as a dict."""
    rc = RunConfig.model_validate(config)
    preflight(rc)
    config = rc.model_dump(mode="json")  # a partial config (a deployment's parameters) gets every default
    pack = load_pack(rc.pack).name
    print(f"[kdbench] {pack}: submitting models -> elicitation ({', '.join(rc.elicit.methods)}) -> dataset -> "
          f"baselines -> {', '.join(rc.distill.algorithms)} x seeds {rc.distill.seeds} -> report")
    done = wait_pack(pack, submit_pack(config))
    paths = report.submit(config).result()
    uri = tracking.tracking_uri(rc)
    print()
    summarize(rc, pack, done)
    print(f"[kdbench] leaderboard: {Path(paths['markdown']).resolve()}"
          + (f" (and {Path(paths['html']).resolve()})" if paths.get("html") else ""))
    print(f"[kdbench] MLflow runs: {uri}\n[kdbench] open the UI: {tracking.ui_command(uri)}")
    return {"pack": pack, "report": paths, "results": done["rows"], "teacher": done["teacher"]["metrics"],
            "student_before": done["before"]["metrics"], "tracking_uri": uri}
