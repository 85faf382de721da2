"""Faults, injected for real: SIGKILL mid-training, a checkpoint that cannot be written,
corrupted cache files, and two runs at once on one SQLite tracking file. For each:
nothing already finished is lost or duplicated, and no MLflow run is left RUNNING."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from kdbench.packs.scaffold import scaffold

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
MICRO = [
    "--set",
    "tiny.vocab_size=400",
    "--set",
    "tiny.max_positions=128",
    "--set",
    "tiny.teacher_epochs=3",
    "--set",
    "tiny.student_epochs=0",
    "--set",
    "tiny.general_packs=[]",
    "--set",
    "tiny.teacher={hidden_size: 64, num_layers: 2, num_heads: 2, intermediate_size: 128}",
    "--set",
    "tiny.student={hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64}",
    "--set",
    "eval.max_gen_toks=8",
    "--set",
    "distill.train.batch_size=4",
    "--set",
    "distill.train.save_every=5",
    "--set",
    "trust_pack_code=true",  # the scaffolded pack is outside domains/: its eval/utils.py runs when evaluated
]


@pytest.fixture
def env(tmp_path):
    e = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "prefect-results"),
    }
    for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        e.pop(k, None)
    return e


def kdbench_cmd(pack: Path, home: Path, *extra: str) -> list[str]:
    return [
        str(BIN / "kdbench"),
        "run",
        str(pack),
        "--home",
        str(home),
        "--report-dir",
        str(home / "reports"),
        *MICRO,
        *extra,
    ]


def runs_of(home: Path, pack: str = "geo"):
    c = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = c.get_experiment_by_name(f"kdbench-{pack}")
    return c.search_runs([exp.experiment_id], max_results=200) if exp else []


def kill_mid_training(cmd: list[str], home: Path, log: Path, env: dict) -> None:
    """Start ``cmd`` and SIGKILL it (the flow and its temporary Prefect server) once training has checkpointed."""
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline, ckpt = time.time() + 600, None
    while time.time() < deadline and ckpt is None:
        found = list((home / "students").glob("*/checkpoint/step.json")) if (home / "students").exists() else []
        ckpt = found[0] if found else None
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    assert ckpt is not None, log.read_text()[-3000:]
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_mid_training_resumes_from_checkpoint_without_duplicate_runs(tmp_path, env):
    pack = scaffold("geo", tmp_path / "domains")
    home = tmp_path / "home"
    cmd = kdbench_cmd(pack, home, "--algorithms", "sft", "--seeds", "0", "--epochs", "150")
    kill_mid_training(cmd, home, tmp_path / "first.log", env)
    killed = [r for r in runs_of(home) if r.data.tags["kdbench.role"] == "student_after"]
    assert [r.info.status for r in killed] == ["RUNNING"]  # what SIGKILL leaves behind ...

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "resuming from the checkpoint at step" in out.stdout + out.stderr
    assert "models: cached result reused" in out.stdout  # the models and elicitation were not recomputed
    assert "elicitation: cached result reused" in out.stdout
    runs = runs_of(home)
    after = [r for r in runs if r.data.tags["kdbench.role"] == "student_after"]
    assert len(after) == 1 and after[0].info.run_id == killed[0].info.run_id  # ... is resumed, not orphaned
    assert after[0].info.status == "FINISHED" and after[0].data.tags["kdbench.resumed"] == "1"
    assert all(r.info.status == "FINISHED" for r in runs)
    assert sorted(r.data.tags["kdbench.role"] for r in runs) == [
        "elicitation",
        "student_after",
        "student_before",
        "teacher",
    ]


def test_checkpoint_write_error_fails_the_run_and_keeps_the_last_good_checkpoint(micro, tmp_path, monkeypatch):
    import kdbench.training as trainer
    from kdbench import steps, tracking
    from kdbench.errors import KdbenchError

    cfg = micro.cfg.model_copy(deep=True)
    cfg.home = str(tmp_path / "home")
    cfg.distill.train.epochs = 6
    cfg.distill.train.save_every = 5
    config = cfg.model_dump(mode="json")
    models = steps.Models(teacher=micro.models.teacher, students=[micro.models.student])
    elicited = steps.elicit_step(config, models)
    data = steps.dataset_step(config, elicited, models)
    t_eval = steps.baseline_step(config, "teacher", models, 0, data)
    b_eval = steps.baseline_step(config, "student_before", models, 0, data)
    real_save, calls = trainer._save_checkpoint, {"n": 0}

    def flaky_save(ckpt, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_save(ckpt, *a, **k)

    monkeypatch.setattr(trainer, "_save_checkpoint", flaky_save)
    with pytest.raises(
        KdbenchError, match=r"could not write the checkpoint at step 10 .* the checkpoint at step 5 is kept"
    ):
        steps.student_step(config, "sft", 0, models, 0, data, t_eval, b_eval)
    c = tracking.client(cfg)
    run = [
        r
        for r in c.search_runs([tracking.experiment_id(c, cfg, "geo")])
        if r.data.tags["kdbench.role"] == "student_after"
    ][0]
    assert run.info.status == "FAILED" and "No space left" in run.data.tags["kdbench.error"]
    monkeypatch.setattr(trainer, "_save_checkpoint", real_save)
    row = steps.student_step(config, "sft", 0, models, 0, data, t_eval, b_eval)  # disk freed: rerun
    assert row.run_id == run.info.run_id
    assert c.get_run(run.info.run_id).info.status == "FINISHED"


def test_corrupted_caches_are_rebuilt_not_trusted(micro, tmp_path, capsys):
    from kdbench.dataset import build_dataset
    from kdbench.distill.run import distill
    from kdbench.elicit import elicit
    from kdbench.evaluate import evaluate

    cfg = micro.cfg.model_copy(deep=True)
    cfg.eval.limit = 4
    res = elicit(micro.pack, micro.models.teacher, cfg, tmp_path)
    info = build_dataset(micro.pack, res.path, tmp_path)
    ev = evaluate(micro.models.student, micro.pack, cfg, tmp_path)
    done = distill("sft", 0, micro.models.teacher, micro.models.student, info, cfg, tmp_path)
    result_json = Path(ev.samples_path).with_name("result.json")
    result_json.write_text('{"model": "x", "metr')  # truncated
    (Path(done.model_dir).parent / "DONE").write_bytes(b"\x00\xff garbage")
    (info.path / "manifest.json").write_text("")
    again = evaluate(micro.models.student, micro.pack, cfg, tmp_path)
    assert not again.cached and again.metrics == ev.metrics
    redo = distill("sft", 0, micro.models.teacher, micro.models.student, info, cfg, tmp_path)
    assert not redo.cached and redo.steps == done.steps
    info2 = build_dataset(micro.pack, res.path, tmp_path)
    assert info2.manifest["rows"] == info.manifest["rows"]
    out = capsys.readouterr().out
    assert out.count("is unreadable") == 3 and result_json.with_name("result.json.corrupt").exists()


def test_corrupted_checkpoint_restarts_training(micro, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdbench.config import TrainConfig
    from kdbench.data import tokenize_example
    from kdbench.distill.sft import sft_step
    from kdbench.training import train

    tok = AutoTokenizer.from_pretrained(micro.models.student)
    ex = [tokenize_example(tok, k.question, k.answer) for k in micro.pack.knowledge]
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    (ckpt / "step.json").write_text('{"step": 3}')
    (ckpt / "state.pt").write_bytes(b"not a torch file")
    res = train(
        AutoModelForCausalLM.from_pretrained(micro.models.student),
        tok,
        ex,
        sft_step,
        cfg=TrainConfig(max_steps=4, batch_size=4, save_every=0),
        out_dir=tmp_path,
        seed=0,
    )
    assert res.resumed_from == 0 and res.steps == 4
    assert "cannot be read" in capsys.readouterr().out and list(tmp_path.glob("checkpoint.corrupt-*"))


def test_two_runs_at_once_on_one_sqlite_file(tmp_path, env):
    pack = scaffold("geo", tmp_path / "domains")
    home = tmp_path / "home"
    cmd = kdbench_cmd(pack, home, "--algorithms", "sft,fkl", "--seeds", "0", "--epochs", "2")
    logs = [tmp_path / f"run{i}.log" for i in range(2)]
    procs = [subprocess.Popen(cmd, env=env, stdout=lg.open("w"), stderr=subprocess.STDOUT) for lg in logs]
    codes = [p.wait(timeout=1200) for p in procs]
    assert codes == [0, 0], "\n\n".join(lg.read_text()[-3000:] for lg in logs)
    runs = runs_of(home)
    roles = sorted(r.data.tags["kdbench.role"] for r in runs)
    assert roles == ["elicitation", "student_after", "student_after", "student_before", "teacher"]  # no duplicates
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len(list((home / "models").glob("geo-*/DONE"))) == 1  # built once
    assert len(list((home / "students").glob("*/DONE"))) == 2


def test_cache_folders_deleted_by_hand_are_rebuilt_behind_cached_prefect_results(tmp_path, env):
    """Prefect's persisted results point at folders under <home>. A run killed mid-training, whose user then
    deletes those folders to free disk, is rerun: the cached results' folders are rebuilt, not a crash."""
    import shutil

    pack = scaffold("geo", tmp_path / "domains")
    home = tmp_path / "home"
    cmd = kdbench_cmd(pack, home, "--algorithms", "sft", "--seeds", "0", "--epochs", "150")
    kill_mid_training(cmd, home, tmp_path / "first.log", env)
    for folder in ("models", "elicit", "datasets"):
        shutil.rmtree(home / folder)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "dataset: cached result reused (Prefect)" in log  # the results upstream came from Prefect's cache
    assert "for a cached result are gone; making them again" in log and "of a cached result is gone" in log
    assert "resuming from the checkpoint at step" in log  # the rebuilt models are the same models
    assert list((home / "datasets").glob("geo-*/manifest.json")) and list((home / "models").glob("geo-*/DONE"))
    runs = runs_of(home)
    assert sorted(r.data.tags["kdbench.role"] for r in runs) == [
        "elicitation",
        "student_after",
        "student_before",
        "teacher",
    ]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_resumed_training_logs_each_curve_point_once(micro, tmp_path, monkeypatch, capsys):
    """A run dies three steps past its checkpoint at step 5; the rerun resumes there. The curve's points of the
    steps between the checkpoint and the death were never sent, so MLflow holds every step once."""
    import kdbench.distill.run as distill_run
    from kdbench import steps, tracking

    class Killed(Exception):
        pass

    cfg = micro.cfg.model_copy(deep=True)
    cfg.home = str(tmp_path / "home")
    cfg.distill.train.max_steps = 12
    cfg.distill.train.save_every = 5
    cfg.distill.train.log_every = 1
    config = cfg.model_dump(mode="json")
    models = steps.Models(teacher=micro.models.teacher, students=[micro.models.student])
    data = steps.dataset_step(config, steps.elicit_step(config, models), models)
    t_eval = steps.baseline_step(config, "teacher", models, 0, data)
    b_eval = steps.baseline_step(config, "student_before", models, 0, data)
    real_train = distill_run.train

    def train_dying_at_step_8(student, tokenizer, examples, step_fn, **kw):
        def step(ctx, batch):
            if ctx.step == 8:
                raise Killed("killed at step 8")
            return step_fn(ctx, batch)

        return real_train(student, tokenizer, examples, step, **kw)

    monkeypatch.setattr(distill_run, "train", train_dying_at_step_8)
    with pytest.raises(Killed):
        steps.student_step(config, "sft", 0, models, 0, data, t_eval, b_eval)
    c = tracking.client(cfg)
    run = next(
        r
        for r in c.search_runs([tracking.experiment_id(c, cfg, "geo")])
        if r.data.tags["kdbench.role"] == "student_after"
    )
    steps_logged = lambda: sorted(m.step for m in c.get_metric_history(run.info.run_id, "train.loss"))  # noqa: E731
    assert steps_logged() == [0, 1, 2, 3, 4]  # what the checkpoint at step 5 covers; 5, 6 and 7 were held back

    monkeypatch.setattr(distill_run, "train", real_train)
    capsys.readouterr()
    row = steps.student_step(config, "sft", 0, models, 0, data, t_eval, b_eval)
    assert row.run_id == run.info.run_id
    assert "resuming from the checkpoint at step 5/12" in capsys.readouterr().out
    assert steps_logged() == list(range(12))  # each step once
    assert len(c.get_metric_history(run.info.run_id, "train.lr")) == 12


BUILD_TINY = """
import sys
from kdbench.log import setup
setup()
import kdbench.models.tiny as tiny
from kdbench.config import load_config
from kdbench.packs import load_pack
from tests.conftest import MICRO
pack, home, epochs, save_every = sys.argv[1:]
tiny.TEACHER_SAVE_EVERY = int(save_every)
cfg = load_config(overrides={"pack": pack, "home": home, "tiny": {**MICRO, "teacher_epochs": float(epochs)}})
tiny.build_tiny_models(load_pack(cfg.pack), cfg.tiny, cfg.home_path)
"""


def test_sigkill_mid_teacher_training_resumes_from_its_checkpoint(tmp_path):
    """The tiny teacher checkpoints like students: a build killed mid-training resumes, not from zero."""
    import json
    import re

    pack = scaffold("geo", tmp_path / "domains")
    home = tmp_path / "home"
    cmd = [sys.executable, "-c", BUILD_TINY, str(pack), str(home), "20", "10"]  # 90 steps, a checkpoint per 10
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = tmp_path / "first.log"
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline, found = time.time() + 600, []
    while time.time() < deadline and not found:
        found = list(home.glob("models/geo-*/teacher-train/checkpoint/step.json"))
        if proc.poll() is not None:
            pytest.fail(f"the build ended before it could be killed:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    assert found, log.read_text()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    root = found[0].parents[2]
    step = json.loads((root / "teacher-train" / "checkpoint" / "step.json").read_text())["step"]
    assert step > 0 and not (root / "DONE").exists()

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    resumed = re.search(r"geo: train tiny teacher: resuming from the checkpoint at step (\d+)/90", out.stdout)
    assert resumed and int(resumed.group(1)) == step, out.stdout[-3000:]
    assert (root / "DONE").exists() and not (root / "teacher-train").exists()
    assert (root / "teacher" / "config.json").exists() and (root / "student" / "config.json").exists()


def _prefect_server_below(pid: int) -> int | None:
    """The pid of Prefect's temporary server among the descendants of ``pid``, once it runs."""
    from kdbench.watchdog import _cmdline, descendants

    for child in descendants(pid):
        cmd = _cmdline(child)
        if "uvicorn" in cmd and "prefect.server.api.server:create_app" in cmd:
            return child
    return None


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has stopped; whoever adopted it may not have reaped it yet


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the watchdog needs /proc (Linux)")
def test_sigkill_of_kdbench_run_stops_its_prefect_server(tmp_path, env):
    """SIGKILL of the CLI alone (not its process group) leaves Prefect's temporary server behind, unless the CLI's
    watchdog stops it."""
    pack = scaffold("geo", tmp_path / "domains")
    home = tmp_path / "home"
    cmd = kdbench_cmd(pack, home, "--algorithms", "sft", "--seeds", "0", "--epochs", "150")
    log = tmp_path / "run.log"
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    server = None
    try:
        deadline = time.time() + 600
        while time.time() < deadline and server is None:
            server = _prefect_server_below(proc.pid)
            if proc.poll() is not None:
                pytest.fail(f"the run ended before its server was seen:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        assert server is not None, log.read_text()[-3000:]
        time.sleep(2.0)  # the watchdog looks at the CLI's children every second
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 15
        while time.time() < deadline and _running(server):
            time.sleep(0.2)
        assert not _running(server), "Prefect's temporary server outlived the killed `kdbench run`"
        assert "kdbench run" in (home / "logs" / "kdbench.log").read_text().split("kdbench.watchdog: ")[-1]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the run's process group
