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
