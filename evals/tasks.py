"""Write a pack's lm-eval task files from the templates in evals/templates/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"


def write_task_files(eval_dir: Path, pack: str, tasks: list[dict]) -> list[Path]:
    """tasks: dicts with name, kind, data (relative to the pack folder). Returns written files."""
    eval_dir.mkdir(parents=True, exist_ok=True)
    written = [eval_dir / "utils.py"]
    shutil.copyfile(TEMPLATES / "utils.py", written[0])
    for t in tasks:
        data = os.path.relpath(eval_dir.parent / t["data"], eval_dir)
        text = (TEMPLATES / f"{t['kind']}.yaml").read_text().format(task=t["name"], pack=pack, data=data)
        path = eval_dir / f"{t['name']}.yaml"
        path.write_text(text)
        written.append(path)
    return written
