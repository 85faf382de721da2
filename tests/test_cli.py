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
        (
            ["run", "law", "--set", "eval.retention=[hellaswag]"],
            "eval.retention: hellaswag: public lm-eval tasks need the Hugging Face hub, but this machine is offline",
        ),
        (["run", "law", "--seeds", "0,,1"], "--seeds '0,,1': seeds are comma-separated integers"),
        (["run", "law", "--algorithms", ","], "--algorithms ',': an empty entry"),
        (["run", "law", "--students", "tiny,"], "--students 'tiny,': an empty entry"),
        (["run", "law", "--set", "distill.seeds=[]"], "distill.seeds is empty: a run needs at least one"),
        (
            ["run", "law", "--set", "tiny.general_packs=[law,medicne]"],
            "tiny.general_packs (the packs the embedded student is pretrained on): unknown pack 'medicne'",
        ),
        (["run", "law", "--set", "distill.hparams.fkl.temprature=2"], "distill.hparams.fkl"),
        (
            ["run", "law", "--set", "distill.train.epoch=2"],
            "key distill.train.epoch: unknown key (did you mean 'epochs'?)",
        ),
        (
            ["run", "law", "--teacher", "/nonexistent"],
            "teacher '/nonexistent' (--teacher): no such folder /nonexistent",
        ),
        (["run", "law", "--seeds", "a"], "--seeds 'a': seeds are comma-separated integers, e.g. --seeds 0,1,2"),
        (["run", "law", "--backend", "openai"], "--backend openai needs the endpoint: --set elicit.openai_base_url="),
    ],
)
def test_bad_input_fails_fast_and_writes_nothing(tmp_path, args, message, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
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


def _without_root_overrides() -> None:
    """Root writes anywhere: drop the capabilities that override file permissions from the bounding set of the
    process about to be executed, so that, like any user, it cannot write into its own read-only (0555) folder."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.slow
def test_read_only_home_is_refused_in_one_line():
    """Even a fully cached run writes lock files and its MLflow database: a home it cannot write is refused first."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    home = Path(tempfile.mkdtemp(prefix="kdbench-read-only-home-"))
    try:
        home.chmod(0o555)
        r = subprocess.run(
            [sys.executable, "-m", "kdbench.cli", "run", "law", "--home", str(home)],
            capture_output=True,
            text=True,
            cwd=home,
            preexec_fn=_without_root_overrides if os.geteuid() == 0 else None,
            timeout=300,
        )
        assert r.returncode == 2, r.stderr
        assert r.stderr == (
            f"kdbench: error: the home {home} (--home) is not writable (Permission denied in {home}): kdbench "
            "writes caches, lock files and its MLflow database there even when every step is cached; pass a "
            "writable --home\n"
        )
        assert not list(home.iterdir())
    finally:
        home.chmod(0o755)
        shutil.rmtree(home)


def test_trust_pack_code_flag_sets_the_run_config_key():
    """--trust-pack-code sets trust_pack_code: true (the key the pack-validation work adds to RunConfig)."""
    from kdbench.cli import build_parser, run_overrides

    assert run_overrides(build_parser().parse_args(["run", "law", "--trust-pack-code"]))["trust_pack_code"] is True
    assert "trust_pack_code" not in run_overrides(build_parser().parse_args(["run", "law"]))
