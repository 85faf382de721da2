"""One student's training on several processes: torch's launcher, accelerate inside.

``distill.train.processes: N`` (N > 1) makes :func:`kdbench.distill.run.distill`
start ``python -m torch.distributed.run --standalone --nproc-per-node N -m
kdbench.distill.launch <spec.json>`` from inside the flow's task and wait for it.
Every process loads the models and data and runs the one training loop
(kdbench.training.train); accelerate wraps the student in DDP (gloo on CPU,
NCCL on GPUs) and each process takes its share of every global batch of
``batch_size`` examples, so N processes train on the same batches as one.
(FSDP is not offered: its state dicts are collective, which the main-process
checkpoints here are not, and it cannot be exercised on these CPU machines.)

What must happen once happens in the main process (rank 0): checkpoints, the
saved model, the DONE file, and the training curve, which it appends to
``curve.jsonl`` in the output folder as checkpoints cover its points. The
task's process logs those points to MLflow (each once: ``curve.sent`` counts
those already logged), so a killed launch resumes from its checkpoint and its
curve has each step once, as on one process.

If any process dies (SIGKILL, out of memory), the launcher stops the others and
exits non-zero; the task fails with the checkpoint a rerun resumes from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kdbench.config import usable_cpus
from kdbench.errors import ConfigError, RuntimeFailure
from kdbench.log import get_logger

log = get_logger(__name__)

CURVE = "curve.jsonl"  # rank 0's training-curve points, appended when a checkpoint covers them
SENT = "curve.sent"  # how many of them the task's process has logged to MLflow


def check_processes(train_cfg, device: str) -> None:
    """Refuse settings that cannot run here, before anything starts."""
    n = train_cfg.processes
    if n > 1 and device == "cuda":
        import torch

        if torch.cuda.device_count() < n:
            raise ConfigError(
                f"distill.train.processes: {n} processes need {n} GPUs, this machine has "
                f"{torch.cuda.device_count()}; lower it or set device: cpu"
            )
    if train_cfg.lora and n > 1:
        raise ConfigError("distill.train.lora trains on one process; set distill.train.processes: 1")


def curve_writer(out: Path):
    """A log_fn for rank 0: each curve point as one JSON line, flushed and fsync'ed."""
    path = Path(out) / CURVE

    def write(step: int, values: dict) -> None:
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "values": values}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    return write


def forward_curve(out: Path, log_fn) -> int:
    """Log the points of ``curve.jsonl`` not logged yet; returns how many were."""
    path, sent_path = Path(out) / CURVE, Path(out) / SENT
    if log_fn is None or not path.exists():
        return 0
    sent = int(sent_path.read_text()) if sent_path.exists() else 0
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for line in lines[sent:]:
        try:
            point = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: the rerun writes it again
            break
        log_fn(point["step"], point["values"])
        sent += 1
        sent_path.write_text(str(sent))
    return sent


def launch(spec: dict, out: Path, processes: int, log_fn) -> None:
    """Run the training of ``spec`` on ``processes`` processes; returns when rank 0 has written DONE."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "launch.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus() // processes)))  # the CPUs shared, not oversubscribed
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    cmd += ["--max-restarts=0", "-m", "kdbench.distill.launch", str(spec_path)]
    log.info(f"{spec['desc']}: training on {processes} processes ({' '.join(cmd[1:5])} ...)")
    proc = subprocess.Popen(cmd, env=env)
    try:
        code = proc.wait()
    finally:
        if proc.poll() is None:  # this task was interrupted: take the launch down with it
            proc.terminate()
            proc.wait()
        forward_curve(out, log_fn)
    if code != 0:
        ckpt = out / "checkpoint" / "step.json"
        at = f"from the checkpoint at step {json.loads(ckpt.read_text())['step']}" if ckpt.exists() else "from step 0"
        raise RuntimeFailure(
            f"{spec['desc']}: training on {processes} processes failed (the launcher exited with code {code}; "
            f"the processes' output is above). A rerun resumes {at}."
        )


def main(spec_path: str) -> None:
    """One process of the launch (started by torch.distributed.run)."""
    from kdbench.config import RunConfig
    from kdbench.dataset import DatasetInfo
    from kdbench.distill.run import train_student

    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    rank = int(os.environ.get("RANK", "0"))
    train_student(
        spec["algorithm"],
        spec["seed"],
        spec["teacher_ref"],
        spec["student_ref"],
        DatasetInfo(Path(spec["data_path"]), spec["manifest"]),
        RunConfig.model_validate(spec["cfg"]),
        out,
        device=spec["device"],
        log_fn=curve_writer(out) if rank == 0 else None,
    )


if __name__ == "__main__":
    main(sys.argv[1])
