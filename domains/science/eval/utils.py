"""lm-eval hooks for this pack (written by `kdbench packs new`; no need to edit)."""

from pathlib import Path

from evals.hooks import make_loader, process_generation  # noqa: F401

load = make_loader(Path(__file__).parent)
