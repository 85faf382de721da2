"""The domain flow: one vertical, end to end, as a Prefect flow.

load pack -> teacher and students -> elicit -> dataset -> baselines (teacher,
student before) -> distill + evaluate each (student, algorithm, seed) -> report.

Every task persists its result and is cached on its inputs and source (the
CLI stores results under the run home via PREFECT_LOCAL_STORAGE_PATH), so rerunning the same command skips what is
done (the log says which steps were cached). The library underneath caches by
content hash too, so an interrupted step resumes from its own checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from kdbench import steps, tracking
from kdbench.config import RunConfig
from kdbench.packs import load_pack

CACHED = {"cache_policy": TASK_SOURCE + INPUTS, "persist_result": True}

prepare_models = task(steps.prepare_models, name="prepare-models", **CACHED)
elicit = task(steps.elicit_step, name="elicit", **CACHED)
build_dataset = task(steps.dataset_step, name="build-dataset", **CACHED)
baseline = task(steps.baseline_step, name="evaluate-baseline", task_run_name="evaluate-{role}", **CACHED)
student = task(steps.student_step, name="distill-and-evaluate",
               task_run_name="distill-{algorithm}-seed{seed}", **CACHED)
report = task(steps.report_step, name="report")


def _run(t, label: str, *args):
    """Run a task; say when Prefect served it from its cache."""
    state = t(*args, return_state=True)
    result = state.result()
    if state.name == "Cached":
        print(f"[kdbench] {label}: cached result reused (Prefect)")
    return result


@flow(name="kdbench-domain", persist_result=True)
def domain_flow(config: dict) -> dict:
    """Run the benchmark for one pack; ``config`` is a resolved RunConfig as a dict."""
    rc = RunConfig.model_validate(config)
    p = load_pack(rc.pack)
    pack = p.name
    print(f"[kdbench] {pack}: 1/6 teacher and students")
    models = _run(prepare_models, f"{pack}: models", config)
    teacher = models["teacher"]
    print(f"[kdbench] {pack}: 2/6 elicitation ({', '.join(rc.elicit.methods)}) from {teacher}")
    elicited = _run(elicit, f"{pack}: elicitation", config, teacher, models["students"][0])
    print(f"[kdbench] {pack}: 3/6 dataset")
    data = _run(build_dataset, f"{pack}: dataset", config, elicited, teacher)
    print(f"[kdbench] {pack}: 4/6 baselines")
    t_eval = _run(baseline, f"{pack}: teacher evaluation", config, "teacher", teacher, data)
    results = []
    for s in models["students"]:
        b_eval = _run(baseline, f"{pack}: student-before evaluation", config, "student_before", s, data)
        print(f"[kdbench] {pack}: 5/6 distillation: {', '.join(rc.distill.algorithms)} x seeds {rc.distill.seeds}")
        for algo in rc.distill.algorithms:
            for seed in rc.distill.seeds:
                row = _run(student, f"{pack}: {algo} seed {seed}", config, algo, seed, teacher, s, data,
                           t_eval, b_eval)
                results.append(row)
    print(f"[kdbench] {pack}: 6/6 report")
    paths = _run(report, f"{pack}: report", config)
    uri = tracking.tracking_uri(rc)
    task0 = rc.eval.tasks[0] if rc.eval.tasks else p.task_names[0]
    metric = p.task(task0).metric
    print("\n" + steps.summary_line(pack, results, t_eval, b_eval, task0, metric))
    print(f"[kdbench] leaderboard: {Path(paths['markdown']).resolve()}")
    print(f"[kdbench] MLflow runs: {uri}\n[kdbench] open the UI: {tracking.ui_command(uri)}")
    return {"pack": pack, "report": paths, "results": results, "teacher": t_eval["metrics"],
            "student_before": b_eval["metrics"], "tracking_uri": uri}
