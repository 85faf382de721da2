"""A pack's Python is code that runs: kdbench runs it only from its own domains/ folder unless told to.

lm-eval imports the modules a task YAML names with ``!function`` (a pack's
``eval/utils.py``) and renders its Jinja templates, as it does for any task
folder given with ``--include_path``. Validation never imports them (see
:mod:`kdbench.packs.taskfiles`); evaluation must. A pack from elsewhere (a
path, ``./domains``, ``$KDBENCH_DOMAINS``) is therefore evaluated only with
the run-config key ``trust_pack_code`` set, which the user sets after reading
its files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from kdbench.errors import UserError

if TYPE_CHECKING:
    from kdbench.packs.loader import DomainPack

REPO_DOMAINS = Path(__file__).resolve().parents[2] / "domains"
"""The project's own packs, reviewed with its code: their Python runs without asking."""


def python_files(root: Path) -> list[Path]:
    """Every .py file in the pack folder (what lm-eval may import from it), sorted."""
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.relative_to(root).parts)


def is_project_pack(root: Path) -> bool:
    """Whether the pack folder is inside the project's own domains/ (links followed)."""
    return root.resolve().is_relative_to(REPO_DOMAINS.resolve())


def check_pack_code(pack: DomainPack, trusted: bool) -> None:
    """Refuse to run the code of a pack from outside the project's domains/ unless ``trusted`` (the run config's
    ``trust_pack_code``). Called before lm-eval loads the pack's task folder, and by preflight (through
    ``kdbench.evaluate.tasks_for``) so an untrusted pack stops a run before anything is written."""
    if trusted or is_project_pack(pack.root):
        return
    files = ", ".join(os.path.relpath(p, pack.root) for p in pack.python_files) or "none"
    raise UserError(
        f"pack {pack.name!r} at {pack.root} is not one of kdbench's own packs, and evaluating it runs its code: "
        f"its Python files ({files}) and its task YAMLs, which lm-eval imports and executes as they are. Read "
        "them, then allow it with --trust-pack-code, or --set trust_pack_code=true (trust_pack_code: true in a "
        "run config). `kdbench packs validate` never runs a pack's code."
    )
