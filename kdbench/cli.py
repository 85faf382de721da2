"""The `kdbench` command: run packs, list algorithms, manage packs, write reports, show the config.

Command output (tables, paths) goes to stdout with print; progress and
diagnostics go through the ``kdbench`` logger. Flows and the report are imported
when a command needs them: Prefect, MLflow and matplotlib cost seconds to
import, which `kdbench algorithms` or `kdbench packs list` should not pay.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

import yaml

from kdbench import config as run_config
from kdbench import log as kdlog
from kdbench import schedule, tracking, watchdog
from kdbench.distill.registry import ALGORITHMS
from kdbench.errors import KdbenchError, RuntimeFailure, UserError
from kdbench.packs import list_packs, load_pack
from kdbench.packs.scaffold import scaffold
from kdbench.preflight import preflight


def _quiet_env() -> None:
    """Defaults for a machine that may be offline: no telemetry, no stray network look-ups."""
    for k, v in {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        # the temporary local server can take over 20 s to start on a busy 2-core machine
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }.items():
        os.environ.setdefault(k, v)
    run_config.threads_within_affinity()


def _csv(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def _items(flag: str, s: str | None, example: str) -> list[str] | None:
    """A comma-separated flag's values; an empty entry (``a,,b``, ``,``) is an error, not skipped."""
    if s is None:
        return None
    items = [x.strip() for x in s.split(",")]
    if not all(items):
        raise UserError(f"{flag} {s!r}: an empty entry; give comma-separated values, e.g. {flag} {example}")
    return items


def _set(overrides: dict, dotted: str, value) -> None:
    node = overrides
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


def run_overrides(a: argparse.Namespace) -> dict:
    """Flags -> a nested dict over the run config (flags win over the YAML)."""

    o: dict = {"pack": a.pack}
    simple = {
        "home": a.home,
        "report_dir": a.report_dir,
        "device": a.device,
        "models.teacher": a.teacher,
        "models.students": _items("--students", a.students, "tiny,pruned:smollm2:6"),
        "distill.algorithms": _items("--algorithms", a.algorithms, "sft,fkl,gkd"),
        "distill.seeds": _seeds(a.seeds),
        "elicit.methods": _items("--methods", a.methods, "labeling,expansion"),
        "elicit.backend": a.backend,
        "elicit.limit": a.seed_limit,
        "eval.limit": a.eval_limit,
        "eval.public": True if a.public else None,
        "tracking.uri": a.tracking_uri,
        "distill.train.epochs": a.epochs,
        "distill.train.lora": True if a.lora else None,
    }
    for k, v in simple.items():
        if v is not None:
            _set(o, k, v)
    if getattr(a, "trust_pack_code", False):
        _set(o, "trust_pack_code", True)
    for item in a.set or []:
        _parse_set(o, item)
    return o


def _seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise UserError(f"--seeds {text!r}: seeds are comma-separated integers, e.g. --seeds 0,1,2") from None


def _parse_set(overrides: dict, item: str) -> None:
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set distill.hparams.jsd.beta=0.9")
    k, v = item.split("=", 1)
    _set(overrides, k.strip(), yaml.safe_load(v))


def cmd_run(a: argparse.Namespace) -> int:
    """One pack: the domain flow. Several (comma-separated): the benchmark flow, one report across them."""
    packs = _csv(a.pack) or []
    a.pack = packs[0] if packs else a.pack
    cfg = run_config.load_config(a.config, run_overrides(a))
    for p in packs:  # every pack checked before anything starts
        preflight(cfg.model_copy(update={"pack": p}))
    a.log_file = kdlog.setup(debug=a.debug, home=cfg.home_path)  # bad input above leaves no home behind
    watchdog.start(a.log_file)  # stops Prefect's temporary server should this process be killed
    uri = tracking.tracking_uri(cfg)
    if tracking.sqlite_path(uri) is not None:  # made (or repaired, or refused) now, not after the first steps
        tracking.open_client(uri)
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(cfg.home_path / "prefect-results"))
    if len(packs) > 1:
        from flows.benchmark import benchmark_flow

        benchmark_flow(cfg.model_dump(mode="json"), packs)
    else:
        from flows.domain import domain_flow

        domain_flow(cfg.model_dump(mode="json"))
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    """The lm_eval command lines that reproduce a run's scores (kdbench/eval_commands.py)."""
    from kdbench.eval_commands import command_lines

    packs = _csv(a.pack) or []
    for i, pack in enumerate(packs):
        a.pack = pack
        cfg = run_config.load_config(a.config, run_overrides(a))
        print(("\n" if i else "") + "\n".join(command_lines(cfg)))
    return 0


def cmd_schedule(a: argparse.Namespace) -> int:
    over: dict = {}
    for item in a.set or []:
        _parse_set(over, item)
    schedule.serve(_csv(a.only), overrides=over or None, limit=a.limit)
    return 0


def cmd_automations(a: argparse.Namespace) -> int:
    for name in schedule.ensure_automations():
        print(name)
    return 0


def cmd_algorithms(a: argparse.Namespace) -> int:
    width = max(map(len, ALGORITHMS))
    family = max(len(a.family) for a in ALGORITHMS.values())
    for name, algo in ALGORITHMS.items():
        box = "white-box" if algo.white_box else "black-box"
        print(f"{name:<{width}}  {algo.family:<{family}} {box:<9}  {algo.summary}")
        if a.defaults:
            defaults = ", ".join(f"{k}={v}" for k, v in algo.config().model_dump().items())
            print(f"{'':<{width}}  defaults: {defaults or 'none'}")
    return 0


def cmd_packs(a: argparse.Namespace) -> int:
    if a.packs_cmd == "list":
        packs = list_packs()
        if not packs:
            print("no packs found (looked in ./domains, the repo's domains/ and $KDBENCH_DOMAINS)")
        for name, path in packs.items():
            try:
                p = load_pack(path)
                counts = ", ".join(f"{k} {v}" for k, v in p.counts().items())
                print(f"{name:<12} v{p.spec.version:<8} {counts}   ({path})")
            except KdbenchError as e:
                print(f"{name:<12} INVALID: {str(e).splitlines()[0]}   ({path})")
        return 0
    if a.packs_cmd == "validate":
        failed = 0
        for target in a.paths or list(list_packs()):
            try:
                p = load_pack(target)
                print(f"ok: {p.name} ({p.root}): " + ", ".join(f"{k} {v}" for k, v in p.counts().items()))
            except KdbenchError as e:
                failed += 1
                print(f"FAILED: {e}", file=sys.stderr)
        return 1 if failed else 0
    if a.packs_cmd == "new":
        root = scaffold(a.name, Path(a.dir))
        print(
            f"created pack {a.name!r} at {root}\nnext: edit its files, then `kdbench packs validate {root}` "
            f"and `kdbench run {root}` (see {root / 'README.md'})"
        )
        return 0
    return 2


def cmd_report(a: argparse.Namespace) -> int:
    from kdbench.report import write_report

    # an unreachable tracking server should fail in seconds, not after MLflow's minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    over: dict = {"pack": (_csv(a.pack) or ["all"])[0]}
    if a.home:
        over["home"] = a.home
    if a.tracking_uri:
        _set(over, "tracking.uri", a.tracking_uri)
    cfg = run_config.load_config(a.config, over)
    paths = write_report(
        cfg,
        packs=_csv(a.pack),
        algorithms=_csv(a.algorithms),
        since=a.since,
        out_dir=a.out,
        name=a.name,
        ui_url=a.mlflow_ui_url,
    )
    for k, v in paths.items():
        print(f"{k}: {Path(v).resolve()}")
    return 0


def cmd_config(a: argparse.Namespace) -> int:
    """The resolved config of a run (defaults < --config < --set), every key with its help text."""
    over: dict = {"pack": a.pack}
    for item in a.set or []:
        _parse_set(over, item)
    print(run_config.show(run_config.load_config(a.config, over)), end="")
    return 0


def _run_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `kdbench run`, which `kdbench eval` takes too (the same run, its lm_eval commands)."""
    p.add_argument("--config", help="run config YAML (flags override it)")
    p.add_argument("--teacher", help="teacher: hub id, local path, or 'tiny' (default: tiny)")
    p.add_argument("--students", help="comma-separated students (default: tiny)")
    p.add_argument("--algorithms", help=f"comma-separated, from: {','.join(ALGORITHMS)} (default: sft,fkl)")
    p.add_argument("--seeds", help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--methods", help="elicitation methods (default: labeling)")
    p.add_argument("--backend", choices=["auto", "hf", "vllm", "openai"], help="teacher backend (default: auto)")
    p.add_argument("--home", help="cache/checkpoint/tracking folder (default: .kdbench)")
    p.add_argument("--report-dir", help="where leaderboards are written (default: reports/leaderboards)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite under --home)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--epochs", type=float, help="distillation epochs")
    p.add_argument("--lora", action="store_true", help="train students with LoRA adapters (peft)")
    p.add_argument("--public", action="store_true", help="also evaluate on the pack's public lm-eval tasks")
    p.add_argument("--seed-limit", type=int, help="use only the first N seeds (quick looks)")
    p.add_argument("--eval-limit", type=int, help="evaluate on the first N items per task (quick looks)")
    p.add_argument(
        "--trust-pack-code",
        action="store_true",
        help="run the Python code a pack ships (its eval/*.py); sets trust_pack_code: true",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any config key, e.g. --set distill.hparams.jsd.beta=0.9 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kdbench",
        description="Benchmark knowledge distillation of LLMs into domain verticals (Prefect flows, lm-eval, MLflow).",
    )
    p.add_argument("--debug", action="store_true", help="debug logging, and a failure's full traceback")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser(
        "run",
        help="run the benchmark flow for one pack",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="algorithms:\n" + "\n".join(f"  {n:<8} {a.summary}" for n, a in ALGORITHMS.items()),
    )
    r.add_argument(
        "pack",
        help="pack name (see `kdbench packs list`) or path to a pack folder; several, "
        "comma-separated, run as one benchmark with a report across them",
    )
    _run_flags(r)
    r.set_defaults(fn=cmd_run)

    ev = sub.add_parser(
        "eval",
        help="print the lm_eval command lines that reproduce a run's scores (teacher, students before and "
        "after distillation), for any flags of `kdbench run`",
    )
    ev.add_argument("pack", help="pack name or folder; several, comma-separated")
    _run_flags(ev)
    ev.set_defaults(fn=cmd_eval)

    sc = sub.add_parser(
        "schedule",
        help="serve the deployments of prefect.yaml on their cron schedules "
        "(needs a Prefect server: see README, Scheduling)",
    )
    sc.add_argument("--only", help="comma-separated deployment names (default: all)")
    sc.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a run-config key in every served deployment (repeatable)",
    )
    sc.add_argument("--limit", type=int, help="flow runs at once (default: unlimited)")
    sc.set_defaults(fn=cmd_schedule)

    au = sub.add_parser(
        "automations",
        help="create (or update) on the Prefect server the automations that mark runs of a dead worker Crashed "
        "and schedule crashed runs again (a team's set-up, see README; `kdbench schedule` does it itself)",
    )
    au.set_defaults(fn=cmd_automations)

    al = sub.add_parser("algorithms", help="list the distillation algorithms")
    al.add_argument(
        "--defaults",
        action="store_true",
        help="also each algorithm's hyperparameter defaults "
        "(set them with --set distill.hparams.<algorithm>.<key>=...)",
    )
    al.set_defaults(fn=cmd_algorithms)

    pk = sub.add_parser("packs", help="list, validate or create domain packs")
    psub = pk.add_subparsers(dest="packs_cmd", required=True)
    psub.add_parser("list", help="the packs found, with item counts")
    v = psub.add_parser("validate", help="validate packs (default: every pack found)")
    v.add_argument("paths", nargs="*", help="pack names or folders")
    n = psub.add_parser("new", help="scaffold a new, valid pack with example items")
    n.add_argument("name")
    n.add_argument("--dir", default="domains", help="parent folder (default: ./domains)")
    pk.set_defaults(fn=cmd_packs)

    rp = sub.add_parser("report", help="write leaderboard reports (Markdown, HTML, plots, CSV) from MLflow runs")
    rp.add_argument("--pack", help="comma-separated packs (default: all)")
    rp.add_argument("--algorithms", help="comma-separated algorithms (default: all)")
    rp.add_argument("--since", help="only runs started at or after this date/time (ISO, e.g. 2026-11-01)")
    rp.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite under --home)")
    rp.add_argument("--home", help="run home holding the default SQLite DB (default: .kdbench)")
    rp.add_argument("--config", help="run config YAML to read tracking settings from")
    rp.add_argument("--out", help="output folder (default: reports/leaderboards)")
    rp.add_argument(
        "--name",
        help="file name of the report: <out>/<name>.md, .html, <name>-*.png "
        "(default: the pack for one pack, else 'leaderboard')",
    )
    rp.add_argument(
        "--mlflow-ui-url",
        help="where the MLflow UI runs, for run links when the tracking URI is not "
        "a server (default: http://127.0.0.1:5000, what `mlflow ui` serves)",
    )
    rp.set_defaults(fn=cmd_report)

    cf = sub.add_parser("config", help="print the resolved run config with every key's help text")
    cf.add_argument("pack", nargs="?", default="law", help="the pack the config is for (default: law)")
    cf.add_argument("--show", action="store_true", help="print it (the default, and only, action)")
    cf.add_argument("--config", help="run config YAML to resolve")
    cf.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key (repeatable)")
    cf.set_defaults(fn=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad input (a user error: the message alone), 1 a step failed while running (the
    message, and its traceback with --debug or in the run's log file)."""
    _quiet_env()
    args = build_parser().parse_args(argv)
    kdlog.setup(debug=args.debug)
    try:
        return args.fn(args)
    except UserError as e:
        print(f"kdbench: error: {e}", file=sys.stderr)
        return 2
    except RuntimeFailure as e:
        logging.getLogger(kdlog.ROOT).debug("traceback of the failure", exc_info=e)  # into the log file
        where = getattr(args, "log_file", None)
        print(f"kdbench: failed: {e}", file=sys.stderr)
        if args.debug:
            traceback.print_exception(e, file=sys.stderr)
        else:
            print(
                f"kdbench: the traceback is in {where}, or rerun with --debug"
                if where
                else "kdbench: rerun with --debug for the traceback",
                file=sys.stderr,
            )
        return 1
    except KdbenchError as e:  # raised on purpose, of neither kind
        print(f"kdbench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
