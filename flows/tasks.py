"""Prefect tasks: thin wrappers around kdbench.steps, and the graph of one pack.

Every task persists its result and is cached on its inputs and source, so a
rerun skips what is done (results go where PREFECT_LOCAL_STORAGE_PATH points;
the CLI sets it to <home>/prefect-results). Steps that load models onto the
accelerator hold one of ``orchestration.gpu_slots`` slots (kdbench.locks.gpu_slot),
so a benchmark can fan packs x algorithms out as concurrent task runs while at
most that many train or generate at a time on this machine.

Why not a Prefect global concurrency limit: its slots are leases kept by the
server, and a SIGKILLed run keeps its slot until the lease expires, which
stalls the rerun; and GPU slots belong to a machine, not to the cluster. On a
team setup, work-pool concurrency limits bound runs per pool (see README).
"""

from __future__ import annotations

import torch
from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from kdbench import names, steps
from kdbench.locks import gpu_slot
from kdbench.log import get_logger

log = get_logger("flows")

CACHED = {"cache_policy": TASK_SOURCE + INPUTS, "persist_result": True}


def check_crash_retries() -> None:
    """A run scheduled again after crashes (kdbench.schedule's automations) gives up after CRASH_RETRIES of them,
    so a run that always crashes (out of memory at the same step) ends Failed instead of looping."""
    from prefect.runtime import flow_run

    from kdbench.errors import RuntimeFailure
    from kdbench.schedule import CRASH_RETRIES

    runs = int(flow_run.run_count or 1)
    if runs > 1:
        log.info(f"flow run {flow_run.name}: attempt {runs}, resuming from the cached steps of the crashed ones")
    if runs > 1 + CRASH_RETRIES:
        raise RuntimeFailure(
            f"flow run {flow_run.name} crashed {runs - 1} times (at most {CRASH_RETRIES} retries): see the logs of "
            "its earlier attempts (out of memory? a dead machine?); a new run resumes from its cached steps"
        )


def slots(config: dict) -> int:
    return config.get("orchestration", {}).get("gpu_slots") or max(1, torch.cuda.device_count())


@task(name="prepare-models", **CACHED)
def prepare_models(config: dict) -> steps.Models:
    with gpu_slot(slots(config)):
        return steps.prepare_models(config)


@task(name="elicit", **CACHED)
def elicit(config: dict, models: steps.Models) -> steps.Elicited:
    with gpu_slot(slots(config)):
        return steps.elicit_step(config, models)


@task(name="build-dataset", **CACHED)
def build_dataset(config: dict, elicited: steps.Elicited, models: steps.Models) -> steps.Data:
    with gpu_slot(slots(config)):  # the feature method runs the teacher here
        return steps.dataset_step(config, elicited, models)


@task(name="evaluate-baseline", task_run_name="{config[pack]}-evaluate-{role}-{index}", **CACHED)
def baseline(config: dict, role: str, models: steps.Models, index: int, data: steps.Data) -> steps.Evaluation:
    with gpu_slot(slots(config)):
        return steps.baseline_step(config, role, models, index, data)


@task(name="distill-and-evaluate", task_run_name="{config[pack]}-{algorithm}-seed{seed}-student{index}", **CACHED)
def student(
    config: dict,
    algorithm: str,
    seed: int,
    models: steps.Models,
    index: int,
    data: steps.Data,
    teacher_eval: steps.Evaluation,
    before_eval: steps.Evaluation,
) -> steps.StudentResult:
    with gpu_slot(slots(config)):
        return steps.student_step(config, algorithm, seed, models, index, data, teacher_eval, before_eval)


@task(name="report")
def report(config: dict, packs: list[str] | None = None, name: str | None = None) -> dict:
    return steps.report_step(config, packs, name)


def submit_pack(config: dict) -> dict:
    """Submit one pack's whole graph; returns its futures (nothing waits here): models, elicited, data,
    teacher, befores (one per student) and rows.

    The tasks' parameters are typed as what the step receives; they are given the futures of earlier
    tasks, which Prefect resolves to their results before the task runs (and waits on), hence the
    reportArgumentType ignores below."""
    models = prepare_models.submit(config)
    elicited = elicit.submit(config, models)  # pyright: ignore[reportArgumentType]
    data = build_dataset.submit(config, elicited, models)  # pyright: ignore[reportArgumentType]
    t_eval = baseline.submit(config, names.ROLE_TEACHER, models, 0, data)  # pyright: ignore[reportArgumentType]
    befores, rows = [], []
    for i in range(len(config["models"]["students"])):
        b_eval = baseline.submit(config, names.ROLE_BEFORE, models, i, data)  # pyright: ignore[reportArgumentType]
        befores.append(b_eval)
        for algo in config["distill"]["algorithms"]:
            for seed in config["distill"]["seeds"]:
                row = student.submit(config, algo, seed, models, i, data, t_eval, b_eval)  # pyright: ignore[reportArgumentType]
                rows.append(row)
    return {"models": models, "elicited": elicited, "data": data, "teacher": t_eval, "befores": befores, "rows": rows}


def cached_note(future, label: str) -> None:
    if future.state.name == "Cached":
        log.info(f"{label}: cached result reused (Prefect)")
