"""The `kdbench` command: listings, scaffolding, and bad input that stops before any work."""

import subprocess
import sys

import pytest

from kdbench.cli import main


def kdbench(*args, cwd=None):
    """`kdbench ARGS` in a fresh interpreter, as a user runs it (the tests that call it are marked slow)."""
    return subprocess.run(
        [sys.executable, "-m", "kdbench.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_algorithms_lists_each_with_one_line(capsys):
    from kdbench.distill.registry import ALGORITHMS

    assert main(["algorithms"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(ALGORITHMS) and all(line.split()[0] in ALGORITHMS for line in out)


@pytest.mark.slow
def test_run_help_lists_algorithms():
    r = kdbench("run", "--help")
    assert r.returncode == 0 and "algorithms:" in r.stdout and "fkl" in r.stdout


def test_packs_list_and_validate(capsys):
    assert main(["packs", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("law", "medicine", "finance", "science"):
        assert name in out
    assert "law_mc 2" in out  # item counts
    assert main(["packs", "validate"]) == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "lwa"], "unknown pack 'lwa' (did you mean 'law'?); packs found:"),
        (
            ["run", "law", "--algorithms", "sft,fkk"],
            "unknown algorithm 'fkk' (did you mean 'fkl'?); available: sft, gold, fkl",
        ),
        (["run", "law", "--methods", "labelling"], "unknown method 'labelling'"),
        (["run", "law", "--set", "distill.hparams.fkl.temprature=2"], "distill.hparams.fkl"),
        (
            ["run", "law", "--set", "distill.train.epoch=2"],
            "key distill.train.epoch: unknown key (did you mean 'epochs'?)",
        ),
    ],
)
def test_bad_input_fails_fast_and_writes_nothing(tmp_path, args, message):
    home = tmp_path / "home"
    r = kdbench(*args, "--home", str(home), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not home.exists()  # no MLflow database, no caches: the run never started


@pytest.mark.slow
def test_malformed_pack_fails_fast(tmp_path):
    from kdbench.packs.scaffold import scaffold

    root = scaffold("broken", tmp_path)
    (root / "seeds.jsonl").write_text('{"id": "s1", "topic": "capitals", "prompt": "x"}\nnot json\n')
    r = kdbench("run", str(root), "--home", str(tmp_path / "home"), cwd=tmp_path)
    assert r.returncode == 2 and "broken/seeds.jsonl:line 2: not valid JSON" in r.stderr
    assert not (tmp_path / "home").exists()


@pytest.mark.slow
def test_config_file_errors_name_file_and_key(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("distill:\n  algorithms: [sft]\n  sedes: [0]\n")
    r = kdbench("run", "law", "--config", str(cfg), "--home", str(tmp_path / "h"), cwd=tmp_path)
    assert r.returncode == 2 and f"{cfg}: key distill.sedes: unknown key (did you mean 'seeds'?)" in r.stderr


def test_packs_new_then_validate(tmp_path, capsys):
    assert main(["packs", "new", "astro", "--dir", str(tmp_path)]) == 0
    assert main(["packs", "validate", str(tmp_path / "astro")]) == 0
    assert "ok: astro" in capsys.readouterr().out
