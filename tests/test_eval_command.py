"""`kdbench eval`: the printed lm_eval command passes lm_eval what kdbench passes simple_evaluate, and run by
itself gives kdbench's scores."""

import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from kdbench.cli import main
from kdbench.eval_commands import command_lines

BIN = Path(sys.executable).parent
# what the printed command cannot say (each named in its comment lines), and what only changes how lm_eval's
# command line reports (its tracker writes --output_path)
KNOWN = {"bootstrap_iters", "log_samples", "metadata", "verbosity", "evaluation_tracker"}


def _command_for(lines: list[str], label: str) -> tuple[dict[str, str], list[str]]:
    """The environment and argv of the command printed under ``# <label>: ...``."""
    i = next(i for i, line in enumerate(lines) if line.startswith(f"# {label}: "))
    line = next(x for x in lines[i + 1 :] if not x.startswith("#"))
    words = shlex.split(line)
    n = next(i for i, w in enumerate(words) if not re.match(r"[A-Z_][A-Z0-9_]*=", w))  # VAR=value prefixes
    env, argv = dict(w.split("=", 1) for w in words[:n]), words[n:]
    assert argv[0] == "lm_eval"
    return env, argv


def _cfg(micro, tmp_path, **eval_over):
    cfg = micro.cfg.model_copy(deep=True)
    cfg.home = str(tmp_path / "home")
    cfg.models.teacher, cfg.models.students = micro.models.teacher, [micro.models.student]
    cfg.eval.limit = 3
    for k, v in eval_over.items():
        setattr(cfg.eval, k, v)
    return cfg


@pytest.mark.parametrize("chat", ["auto", "no"])
def test_printed_command_gives_lm_eval_what_kdbench_passes(micro, tmp_path, monkeypatch, chat):
    """kdbench's call of simple_evaluate and lm_eval's own command line running the printed command, side by
    side: every argument is the same but those the output names as impossible on the command line."""
    import lm_eval
    import lm_eval.evaluator
    import lm_eval.tasks
    from lm_eval._cli import HarnessCLI

    from kdbench.config import device_for
    from kdbench.errors import RuntimeFailure
    from kdbench.evaluate import evaluate

    cfg = _cfg(micro, tmp_path, apply_chat_template=chat)
    defaults = {
        k: p.default for k, p in inspect.signature(lm_eval.evaluator.simple_evaluate).parameters.items() if k != "model"
    }
    calls: list[dict] = []

    class Captured(Exception):
        pass

    def capture(**kwargs):
        calls.append({**defaults, **kwargs})
        raise Captured

    monkeypatch.setattr(lm_eval.evaluator, "simple_evaluate", capture)
    monkeypatch.setattr(lm_eval, "simple_evaluate", capture, raising=False)
    real_tm = lm_eval.tasks.TaskManager
    # lm_eval's command line also indexes its hundreds of built-in tasks (20 s here), which changes nothing compared
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", lambda *a, **k: real_tm(*a, **{**k, "include_defaults": False}))

    with pytest.raises(RuntimeFailure):
        evaluate(micro.models.student, micro.pack, cfg, tmp_path / "evals", device=device_for(cfg))
    lines = command_lines(cfg)
    env, argv = _command_for(lines, "student before distillation")
    assert argv[argv.index("--model_args") + 1].startswith(f"pretrained={micro.models.student},")
    assert ("--apply_chat_template" in argv) == (chat == "auto")  # the micro models have a chat template
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "argv", argv)
    cli = HarnessCLI()
    with pytest.raises(Captured):
        cli.execute(cli.parse_args())

    kd, cl = calls
    paths = [kd.pop("task_manager").include_path, cl.pop("task_manager").include_path]
    assert [p if isinstance(p, list) else [p] for p in paths] == [[str(micro.pack.eval_dir)]] * 2
    if kd["device"] is None:  # kdbench gives it in model_args, the command line beside them: the model gets the same
        kd["device"] = kd["model_args"].pop("device")
    kd["model_args"] = {k: str(v) for k, v in kd["model_args"].items()}
    cl["model_args"] = {k: str(v) for k, v in cl["model_args"].items()}
    cl["batch_size"] = int(cl["batch_size"])
    assert kd["samples"] and kd["limit"] is None  # eval.limit: the stratified sample, which lm_eval is given too
    if not kd["apply_chat_template"]:  # lm_eval uses it only with a chat template
        kd["fewshot_as_multiturn"] = cl["fewshot_as_multiturn"]
    differ = {k for k in kd if kd[k] != cl.get(k)}
    assert differ == KNOWN, {k: (kd[k], cl.get(k)) for k in differ - KNOWN}
    comments = "\n".join(line for line in lines if line.startswith("#"))
    for name in KNOWN - {"evaluation_tracker"}:
        assert name in comments


def test_eval_on_a_home_without_runs_lists_teacher_and_students_before(micro, tmp_path, capsys):
    args = ["eval", str(micro.pack.root), "--home", str(tmp_path / "home"), "--teacher", micro.models.teacher]
    assert main([*args, "--students", micro.models.student]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"# note: no distilled students: no tracking store at {tmp_path / 'home' / 'mlflow.db'} yet" in lines
    for label, folder in [("teacher", micro.models.teacher), ("student before distillation", micro.models.student)]:
        env, argv = _command_for(lines, label)
        assert env == {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        assert argv[:6] == [
            "lm_eval",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={folder},dtype=float32,trust_remote_code=False",
            "--include_path",
        ]
        assert "--apply_chat_template" in argv and "--limit" not in argv
    assert not (tmp_path / "home").exists()  # a read-only command


@pytest.mark.slow
def test_eval_lists_teacher_students_before_and_each_distilled_student(micro, tmp_path, capsys):
    """Through the CLI, on a home with a distilled student tracked in MLflow."""
    from kdbench import steps

    cfg = _cfg(micro, tmp_path)
    cfg.distill.train.max_steps = 2
    config = cfg.model_dump(mode="json")
    models = steps.Models(teacher=micro.models.teacher, students=[micro.models.student])
    data = steps.dataset_step(config, steps.elicit_step(config, models), models)
    t_eval = steps.baseline_step(config, "teacher", models, 0, data)
    b_eval = steps.baseline_step(config, "student_before", models, 0, data)
    row = steps.student_step(config, "sft", 0, models, 0, data, t_eval, b_eval)
    capsys.readouterr()
    args = ["eval", str(micro.pack.root), "--home", cfg.home, "--eval-limit", "3", "--set", "eval.max_gen_toks=12"]
    assert main([*args, "--teacher", micro.models.teacher, "--students", micro.models.student]) == 0
    lines = capsys.readouterr().out.splitlines()
    for label, folder in [
        ("teacher", micro.models.teacher),
        ("student before distillation", micro.models.student),
        (
            f"sft seed 0 (student {micro.models.student}, teacher {micro.models.teacher}, MLflow run {row.run_id})",
            row.model_dir,
        ),
    ]:
        _, argv = _command_for(lines, label)
        assert f"pretrained={folder}," in argv[argv.index("--model_args") + 1]
        samples = json.loads(argv[argv.index("--samples") + 1])  # eval.limit 3: the stratified sample
        assert set(samples) == {"geo_mc", "geo_qa"} and all(len(ix) == 3 for ix in samples.values())
        assert argv[-10:] == (
            ["--device", "cpu", "--batch_size", "32", "--samples", argv[-5], "--gen_kwargs", "max_gen_toks=12"]
            + ["--seed", "0"]
        )


@pytest.mark.slow
def test_printed_command_run_by_itself_gives_kdbenchs_scores(micro, tmp_path):
    """The command printed for the micro teacher, run with the venv's lm_eval from another directory, scores what
    kdbench's evaluation of the teacher scores."""
    from kdbench.config import device_for
    from kdbench.evaluate import evaluate

    cfg = _cfg(micro, tmp_path)
    cfg.eval.limit = 6
    ours = evaluate(micro.models.teacher, micro.pack, cfg, tmp_path / "evals", device=device_for(cfg)).metrics
    env, argv = _command_for(command_lines(cfg), "teacher")
    out_dir = tmp_path / "lm_eval-out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run(
        [str(BIN / "lm_eval"), *argv[1:], "--output_path", str(out_dir)],
        env={**os.environ, **env},
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (results_file,) = out_dir.rglob("results_*.json")
    theirs = json.loads(results_file.read_text())["results"]
    assert set(theirs) == set(ours)
    for task, row in ours.items():
        scores = {k: v for k, v in row.items() if not k.endswith("_stderr") and k != "n"}
        assert scores and {k: theirs[task][f"{k},none"] for k in scores} == scores, task
