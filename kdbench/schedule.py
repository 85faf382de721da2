"""Serve the deployments of prefect.yaml from one process (`kdbench schedule`).

prefect.yaml is the one source of truth for deployments, schedules and
parameters; `prefect deploy --all` uses it for work pools and workers, and this
module reads the same file to serve the deployments from a single process with
``prefect.serve``. Schedules need a real Prefect server (against the temporary
local one they never fire), so serving refuses to start without PREFECT_API_URL.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, cast

import yaml

from kdbench.config import merge
from kdbench.errors import ConfigError, did_you_mean
from kdbench.log import get_logger

log = get_logger(__name__)

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"


def read_deployments(path: Path = PREFECT_YAML) -> list[dict]:
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the deployments ({e})") from None
    deployments = spec.get("deployments") if isinstance(spec, dict) else None
    if not deployments:
        raise ConfigError(f"{path}: no `deployments:` list")
    return deployments


def load_flow(entrypoint: str):
    """'flows/domain.py:domain_flow' -> the flow object."""
    path, _, name = entrypoint.partition(":")
    module = path.removesuffix(".py").replace("/", ".")
    return getattr(importlib.import_module(module), name)


def runner_deployments(
    only: list[str] | None = None, path: Path = PREFECT_YAML, paused: bool = False, overrides: dict | None = None
) -> list:
    """RunnerDeployments for ``prefect.serve``; ``overrides`` merge into every config parameter."""
    specs = read_deployments(path)
    names = [d["name"] for d in specs]
    for n in only or []:
        if n not in names:
            raise ConfigError(f"unknown deployment {n!r}{did_you_mean(n, names)}; in {path}: {', '.join(names)}")
    out = []
    for d in specs:
        if only and d["name"] not in only:
            continue
        params = dict(d.get("parameters") or {})
        if overrides:
            params["config"] = merge(params.get("config") or {}, overrides)
        crons = [s["cron"] for s in d.get("schedules") or [] if "cron" in s]
        out.append(
            load_flow(d["entrypoint"]).to_deployment(
                name=d["name"],
                cron=crons or None,
                parameters=params,
                description=d.get("description"),
                tags=d.get("tags"),
                paused=paused,
            )
        )
    return out


def require_server() -> str:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        try:
            from prefect.settings import get_current_settings

            url = get_current_settings().api.url
        except Exception:
            url = None
    if not url:
        raise ConfigError(
            "schedules need a Prefect server: start one with `prefect server start --host 127.0.0.1 "
            "--port 4200` and `export PREFECT_API_URL=http://127.0.0.1:4200/api` (against the "
            "temporary local server, scheduled runs are never created)"
        )
    return url


def serve(only: list[str] | None = None, overrides: dict | None = None, limit: int | None = None) -> None:
    from prefect import serve as prefect_serve

    url = require_server()
    # served runs send heartbeats, so a run whose process dies is marked Crashed and scheduled again
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_SECONDS))
    ensure_automations()
    deployments = runner_deployments(only, overrides=overrides)
    log.info(f"serving {', '.join(d.name for d in deployments)} against {url}; Ctrl-C stops")
    prefect_serve(*deployments, limit=limit)


# ---- dead workers: heartbeats stop -> Crashed -> scheduled again --------------------------------------------------

HEARTBEAT_SECONDS = 30  # Prefect's smallest flow-run heartbeat interval (PREFECT_FLOWS_HEARTBEAT_FREQUENCY)
ZOMBIE_AFTER_SECONDS = 90  # no heartbeat for this long: the run's process is gone (Prefect's documented automation)
CRASH_RETRIES = 2  # a crashed kdbench run is scheduled again this many times, then it fails (see flows/domain.py)
FLOWS = ["kdbench-domain", "kdbench-benchmark"]
ZOMBIE_AUTOMATION = "kdbench: crash flow runs whose heartbeats stopped"
RETRY_AUTOMATION = "kdbench: schedule crashed flow runs again"


def _runs_of_kdbench():
    """(match, match_related): a flow run, of one of kdbench's flows."""
    from prefect.events.schemas.events import ResourceSpecification

    return (
        ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
        ResourceSpecification({"prefect.resource.role": "flow", "prefect.resource.name": FLOWS}),
    )


def automations() -> list:
    """The two automations that make a team's runs survive a dead worker.

    1. A kdbench flow run that sends no heartbeat for ZOMBIE_AFTER_SECONDS (its worker or machine died: nothing
       is left to report) is marked Crashed, as Prefect documents for zombie flow runs.
    2. A crashed kdbench flow run (this way, or its process died under a living worker) is set Scheduled again
       (AwaitingRetry), so any worker of the pool picks it up; its steps' cached results and checkpoints, and the
       MLflow runs it had open, are taken up where they stopped. flows/domain.py fails a run that has crashed
       more than CRASH_RETRIES times, so a run that always crashes ends Failed instead of looping.
    """
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    match, related = _runs_of_kdbench()
    crashed: list[Any] = [
        ChangeFlowRunState(
            state=StateType.CRASHED,
            name=None,
            message=f"no heartbeat for {ZOMBIE_AFTER_SECONDS} s: its worker or machine died (kdbench)",
            force=False,
        )
    ]
    scheduled: list[Any] = [
        ChangeFlowRunState(
            state=StateType.SCHEDULED,
            name="AwaitingRetry",
            message="crashed: scheduled again, resuming from its cached steps (kdbench)",
            force=True,  # out of a final state
        )
    ]
    zombie = Automation(
        name=ZOMBIE_AUTOMATION,
        description=f"No heartbeat for {ZOMBIE_AFTER_SECONDS} s (heartbeats every {HEARTBEAT_SECONDS} s): crashed",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=ZOMBIE_AFTER_SECONDS),
            match=match,
            match_related=related,
        ),
        actions=crashed,
    )
    retry = Automation(
        name=RETRY_AUTOMATION,
        description=f"A crashed kdbench run is scheduled again (at most {CRASH_RETRIES} times, see flows/domain.py)",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            match=match,
            match_related=related,
        ),
        actions=scheduled,
    )
    return [zombie, retry]


def ensure_automations() -> list[str]:
    """Create or update kdbench's automations on the Prefect server (idempotent, by name); returns their names."""
    from prefect.automations import Automation

    require_server()
    names = []
    for a in automations():
        try:
            existing = cast(Automation, Automation.read(name=a.name))  # sync here: no event loop runs
        except ValueError:  # none by that name
            existing = None
        if existing is None:
            a.create()
        else:
            a.id = existing.id
            a.update()
        names.append(a.name)
    log.info(f"automations on the Prefect server: {'; '.join(names)}")
    return names
