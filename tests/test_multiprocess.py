"""Training one student on two processes for real: torch's launcher, accelerate's DDP over gloo on CPU.

Two processes on the same global batches train like one; a SIGKILL of one process fails the step with the
checkpoint to resume from, and the rerun resumes there with each curve point logged once."""

import re
import signal
import threading
import time

import psutil
import pytest

from kdbench.dataset import build_dataset
from kdbench.distill.run import distill
from kdbench.elicit import elicit
from kdbench.errors import ConfigError, RuntimeFailure

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(micro, tmp_path_factory):
    home = tmp_path_factory.mktemp("mp-home")
    res = elicit(micro.pack, micro.models.teacher, micro.cfg, home)
    return build_dataset(micro.pack, res.path, home)


def _cfg(micro, home, processes: int, **train):
    cfg = micro.cfg.model_copy(update={"home": str(home)}, deep=True)
    cfg.distill.train = cfg.distill.train.model_copy(
        update={"processes": processes, "batch_size": 8, "log_every": 1, "warmup_ratio": 0.0, **train}
    )
    return cfg


def test_two_processes_follow_the_loss_curve_of_one(micro, data, tmp_path):
    """fkl (the teacher loaded in every process) for 12 steps of 8 examples: 4 per process, or 8 on one."""
    curves = {}
    for n in (1, 2):
        cfg = _cfg(micro, tmp_path / f"p{n}", n, max_steps=12, save_every=4)
        points: list[tuple[int, dict]] = []
        res = distill(
            "fkl",
            0,
            micro.models.teacher,
            micro.models.student,
            data,
            cfg,
            cfg.home_path,
            log_fn=lambda s, v, points=points: points.append((s, v)),
        )
        assert res.steps == 12 and res.train_tokens > 0 and not res.cached
        curves[n] = [v["train.loss"] for _, v in sorted(points)]
        assert [s for s, _ in sorted(points)] == list(range(12))  # each point once, from the main process
    one, two = curves[1], curves[2]
    # the same batches: step 0 is the same loss (two halves weighed by their tokens: the mean over all tokens) ...
    assert two[0] == pytest.approx(one[0], rel=1e-4)
    # ... and the curves stay together while the loss falls
    assert max(abs(a - b) / a for a, b in zip(one, two, strict=True)) < 0.1, (one, two)
    assert one[-1] < one[0] * 0.9 and two[-1] < two[0] * 0.9


def _kill_one_rank_after_a_checkpoint(out_glob, tmp_path, killed: dict) -> None:
    """Wait for a checkpoint, then SIGKILL the launch's rank-1 process."""
    deadline = time.time() + 300
    while time.time() < deadline:
        done = [p for p in tmp_path.glob(out_glob) if (p / "checkpoint" / "step.json").exists()]
        if done:
            for proc in psutil.process_iter(["cmdline"]):
                cmd = " ".join(proc.info["cmdline"] or [])
                if "kdbench.distill.launch" in cmd and "torch.distributed.run" not in cmd:
                    try:
                        if proc.environ().get("RANK") == "1":
                            proc.send_signal(signal.SIGKILL)
                            killed["pid"] = proc.pid
                            return
                    except psutil.Error:
                        continue
        time.sleep(0.05)


def test_sigkill_of_one_process_fails_the_step_and_the_rerun_resumes(micro, data, tmp_path):
    cfg = _cfg(micro, tmp_path / "home", 2, max_steps=400, save_every=10)
    points: list[tuple[int, dict]] = []

    def log(step, values):
        points.append((step, values))

    killed: dict = {}
    killer = threading.Thread(
        target=_kill_one_rank_after_a_checkpoint, args=("home/students/*", tmp_path, killed), daemon=True
    )
    killer.start()
    with pytest.raises(RuntimeFailure, match="training on 2 processes failed") as e:
        distill("fkl", 0, micro.models.teacher, micro.models.student, data, cfg, cfg.home_path, log_fn=log)
    killer.join()
    assert killed, "no rank-1 process was found to kill"
    at = re.search(r"resumes from the checkpoint at step (\d+)", str(e.value))
    assert at, str(e.value)
    step = int(at.group(1))
    assert 0 < step < 400
    res = distill("fkl", 0, micro.models.teacher, micro.models.student, data, cfg, cfg.home_path, log_fn=log)
    assert res.resumed_from == step and res.steps == 400 and not res.cached
    steps = [s for s, _ in points]
    assert sorted(steps) == list(range(400)), "each curve point logged once across the kill and the rerun"
    assert not any(
        p.info["cmdline"] and "kdbench.distill.launch" in " ".join(p.info["cmdline"])
        for p in psutil.process_iter(["cmdline"])
    ), "a process of the launch outlived it"


def test_processes_refused_where_they_cannot_run(micro):
    from kdbench.distill.launch import check_processes

    with pytest.raises(ConfigError, match="lora trains on one process"):
        check_processes(micro.cfg.distill.train.model_copy(update={"processes": 2, "lora": True}), "cpu")
