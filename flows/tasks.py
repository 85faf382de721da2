"""Prefect tasks: thin wrappers around kdbench.steps, and the graph of one pack.

Every task persists its result and is cached on its inputs and source, so a
rerun skips what is done (results go where PREFECT_LOCAL_STORAGE_PATH points;
the CLI sets it to <home>/prefect-results). Steps that load models onto the
accelerator hold a slot of the global concurrency limit ``kdbench-gpu``, so a
benchmark can fan packs x algorithms out as concurrent task runs while at most
``orchestration.gpu_slots`` of them train or generate at a time.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.concurrency.sync import concurrency

from kdbench import steps

GPU_LIMIT = "kdbench-gpu"
CACHED = {"cache_policy": TASK_SOURCE + INPUTS, "persist_result": True}


def ensure_gpu_limit(slots: int) -> None:
    """Create or resize the global concurrency limit the heavy tasks share."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(GPU_LIMIT)
            client.update_global_concurrency_limit(GPU_LIMIT, GlobalConcurrencyLimitUpdate(limit=slots))
        except Exception:  # not there yet (ObjectNotFound), or created by a concurrent run meanwhile
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=slots))
            except Exception:
                client.update_global_concurrency_limit(GPU_LIMIT, GlobalConcurrencyLimitUpdate(limit=slots))


@task(name="prepare-models", **CACHED)
def prepare_models(config: dict) -> dict:
    with concurrency(GPU_LIMIT):
        return steps.prepare_models(config)


@task(name="elicit", **CACHED)
def elicit(config: dict, models: dict) -> dict:
    with concurrency(GPU_LIMIT):
        return steps.elicit_step(config, models)


@task(name="build-dataset", **CACHED)
def build_dataset(config: dict, elicited: dict, models: dict) -> dict:
    with concurrency(GPU_LIMIT):  # the feature method runs the teacher here
        return steps.dataset_step(config, elicited, models)


@task(name="evaluate-baseline", task_run_name="{config[pack]}-evaluate-{role}-{index}", **CACHED)
def baseline(config: dict, role: str, models: dict, index: int, data: dict) -> dict:
    with concurrency(GPU_LIMIT):
        return steps.baseline_step(config, role, models, index, data)


@task(name="distill-and-evaluate", task_run_name="{config[pack]}-{algorithm}-seed{seed}-student{index}", **CACHED)
def student(config: dict, algorithm: str, seed: int, models: dict, index: int, data: dict, teacher_eval: dict,
            before_eval: dict) -> dict:
    with concurrency(GPU_LIMIT):
        return steps.student_step(config, algorithm, seed, models, index, data, teacher_eval, before_eval)


@task(name="report")
def report(config: dict, packs: list[str] | None = None, name: str | None = None, wait_for_rows=None) -> dict:
    return steps.report_step(config, packs, name)


def submit_pack(config: dict) -> dict:
    """Submit one pack's whole graph; returns its futures (nothing waits here)."""
    n_students = len(config["models"]["students"])
    models = prepare_models.submit(config)
    elicited = elicit.submit(config, models)
    data = build_dataset.submit(config, elicited, models)
    t_eval = baseline.submit(config, "teacher", models, 0, data)
    rows = []
    for i in range(n_students):
        b_eval = baseline.submit(config, "student_before", models, i, data)
        for algo in config["distill"]["algorithms"]:
            for seed in config["distill"]["seeds"]:
                rows.append(student.submit(config, algo, seed, models, i, data, t_eval, b_eval))
    return {"models": models, "elicited": elicited, "data": data, "teacher": t_eval, "rows": rows,
            "before": b_eval}


def cached_note(future, label: str) -> None:
    state = future.state
    if state.name == "Cached":
        print(f"[kdbench] {label}: cached result reused (Prefect)")
