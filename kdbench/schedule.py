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
    deployments = runner_deployments(only, overrides=overrides)
    log.info(f"serving {', '.join(d.name for d in deployments)} against {url}; Ctrl-C stops")
    prefect_serve(*deployments, limit=limit)
