"""kdbench's layers depend one way: a module imports only from lower layers (or its own part).

Every import of kdbench's own modules is checked, those inside functions too, so
a cycle cannot hide in a lazy import. The picture is in the README
(Development); change both together.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# lowest first; each entry is one part (a module or a package); parts on one line are siblings that must
# not import each other
LAYERS: list[list[str]] = [
    ["kdbench", "kdbench.errors", "kdbench.log", "kdbench.names", "kdbench.watchdog", "evals"],  # no kdbench imports
    ["kdbench.config", "kdbench.data", "kdbench.locks", "kdbench.metrics"],
    ["kdbench.packs"],
    ["kdbench.models.loading", "kdbench.models.sampling", "kdbench.training"],
    ["kdbench.topk"],  # the teacher top-k cache: written by the dataset step, read by distillation
    ["kdbench.dataset"],
    ["kdbench.models.tiny", "kdbench.models.refs", "kdbench.models.adapt", "kdbench.backends"],
    ["kdbench.elicit", "kdbench.distill"],  # knowledge elicitation and distillation never import each other
    ["kdbench.evaluate", "kdbench.tracking"],
    ["kdbench.report"],
    ["kdbench.steps", "kdbench.preflight", "kdbench.schedule", "kdbench.eval_commands"],
    ["flows"],  # Prefect: tasks and flows around the steps
    ["kdbench.cli"],  # the command: runs flows, reports, schedules
]
PARTS = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str:
    """The layer entry a dotted module name belongs to (its longest listed prefix)."""
    best = max((p for p in PARTS if module == p or module.startswith(p + ".")), key=len, default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS (and the README's picture)"
    return best


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def own_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of kdbench, flows or evals in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            # `from kdbench import names` imports the module kdbench.names, not the package
            out.append((node.lineno, next((n for n in names[1:] if _is_module(n)), node.module)))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return [(line, m) for line, m in out if m.split(".")[0] in ("kdbench", "flows", "evals")]


def _is_module(dotted: str) -> bool:
    p = REPO / Path(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


FILES = sorted([*REPO.glob("kdbench/**/*.py"), *REPO.glob("flows/*.py"), *REPO.glob("evals/*.py")])


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_go_down(path):
    me = part_of(module_name(path))
    bad = []
    for line, target in own_imports(path):
        other = part_of(target)
        if other != me and PARTS[other] >= PARTS[me]:
            bad.append(
                f"{path.relative_to(REPO)}:{line} imports {target} ({other}, layer {PARTS[other]}) "
                f"from {me} (layer {PARTS[me]})"
            )
    assert not bad, "\n".join(bad)


def test_the_check_catches_an_upward_import(tmp_path):
    """A distill module importing elicit (a sibling) or steps (above) is refused."""
    probe = REPO / "kdbench" / "distill" / "_layer_probe.py"
    probe.write_text("def f():\n    from kdbench.elicit import elicit\n    from kdbench.steps import Models\n")
    try:
        with pytest.raises(AssertionError, match=r"imports kdbench\.elicit.*\n.*imports kdbench\.steps"):
            test_imports_go_down(probe)
    finally:
        probe.unlink()
