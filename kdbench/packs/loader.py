"""Find and load domain packs, with errors that name the file, line or key.

``load_pack`` reads pack.yaml, every JSONL file it names and the eval task
YAMLs, validates them against :mod:`kdbench.packs.schema`, adds generated seeds,
and checks that no evaluation item leaks into the seeds. Problems are gathered
and reported together (up to ``MAX_ERRORS``) so one edit-validate cycle fixes
many of them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import ValidationError

from kdbench.errors import PackError, did_you_mean
from kdbench.packs import decontam
from kdbench.packs.generators import GENERATORS
from kdbench.packs.schema import ITEM_MODELS, KnowledgeItem, MCItem, PackSpec, QAItem, SeedItem

MAX_ERRORS = 20
REPO_DOMAINS = Path(__file__).resolve().parents[2] / "domains"


def domain_dirs() -> list[Path]:
    """Where packs are looked up by name: $KDBENCH_DOMAINS, ./domains, the repo's domains/."""
    dirs = [Path(p) for p in os.environ.get("KDBENCH_DOMAINS", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "domains", REPO_DOMAINS]
    seen, out = set(), []
    for d in dirs:
        r = d.resolve()
        if r not in seen and r.is_dir():
            seen.add(r)
            out.append(r)
    return out


def list_packs() -> dict[str, Path]:
    """Pack name -> folder for every folder with a pack.yaml in the domain dirs."""
    found: dict[str, Path] = {}
    for d in domain_dirs():
        for sub in sorted(d.iterdir()):
            if (sub / "pack.yaml").is_file():
                found.setdefault(sub.name, sub)
    return found


def find_pack(name_or_path: str | Path) -> Path:
    """The folder of a pack given by name (looked up) or by path."""
    p = Path(name_or_path)
    if p.is_dir():
        if not (p / "pack.yaml").is_file():
            raise PackError(f"{p}: no pack.yaml in this folder; create one with `kdbench packs new NAME`")
        return p.resolve()
    packs = list_packs()
    if str(name_or_path) in packs:
        return packs[str(name_or_path)]
    where = ", ".join(str(d) for d in domain_dirs()) or "no domains/ folder found"
    names = ", ".join(sorted(packs)) or "none"
    raise PackError(
        f"unknown pack {str(name_or_path)!r}{did_you_mean(str(name_or_path), packs)}; "
        f"packs found: {names} (in {where}). A pack can also be given as a path to its folder."
    )


@dataclass
class DomainPack:
    """A validated pack: its spec, folder and items."""

    spec: PackSpec
    root: Path
    knowledge: list[KnowledgeItem]
    seeds: list[SeedItem]  # from seeds.jsonl, then from generators
    eval_items: dict[str, list[MCItem | QAItem]]  # task name -> items
    data_hash: str  # every file of the pack
    train_hash: str  # pack.yaml, knowledge and seeds only: what a teacher may learn from

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def eval_dir(self) -> Path:
        return self.root / self.spec.eval.include_path

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.spec.eval.tasks]

    def task(self, name: str):
        return next(t for t in self.spec.eval.tasks if t.name == name)

    def teacher_system(self, method: str) -> str:
        """The pack's system prompt for the teacher, plus its instruction for ``method`` when it has one."""
        instruction = self.spec.teacher.instructions.get(method, "").strip()
        return self.spec.teacher.system_prompt.strip() + (f"\n{instruction}" if instruction else "")

    def counts(self) -> dict[str, int]:
        out = {"knowledge": len(self.knowledge), "seeds": len(self.seeds)}
        out.update({t: len(items) for t, items in self.eval_items.items()})
        return out

    def eval_index(self, n: int = decontam.DEFAULT_N) -> decontam.NgramIndex:
        """N-grams of every evaluation item (question + right answer)."""
        return decontam.NgramIndex(
            {f"{task}:{it.id}": it.text for task, items in self.eval_items.items() for it in items}, n=n
        )


class _Errors:
    """Collects problems; raises them together as one PackError."""

    def __init__(self, root: Path):
        self.root = root
        self.items: list[str] = []

    def add(self, file: Path | str, where: str, problem: str) -> None:
        rel = os.path.relpath(file, self.root.parent) if isinstance(file, Path) else file
        self.items.append(f"{rel}{':' + where if where else ''}: {problem}")

    def raise_if_any(self) -> None:
        if self.items:
            shown = self.items[:MAX_ERRORS]
            more = len(self.items) - len(shown)
            tail = f"\n  ... and {more} more" if more > 0 else ""
            head = f"pack at {self.root} is invalid ({len(self.items)} problem{'s' * (len(self.items) > 1)}):"
            raise PackError(head + "\n  " + "\n  ".join(shown) + tail)


class _TolerantLoader(yaml.SafeLoader):
    """Reads lm-eval YAMLs: keeps ``!function x.y`` as the string 'x.y'."""


def _function_as_string(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    return loader.construct_scalar(node)


_TolerantLoader.add_constructor("!function", _function_as_string)


def _yaml_line(node: yaml.Node | None, loc: tuple) -> int | None:
    """Line (1-based) of the key at ``loc`` in a composed YAML node tree."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == key), None)
            if match is None:
                return line
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            item: yaml.Node = node.value[key]
            line, node = item.start_mark.line + 1, item
        else:
            return line
    return line


def _inside(root: Path, rel: str, errors: _Errors, key: str) -> Path | None:
    """``root/rel`` if it stays inside the pack folder and exists, else record why not."""
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        errors.add(root / "pack.yaml", f"key {key}", f"path {rel!r} escapes the pack folder; use a path inside {root}")
        return None
    if not path.exists():
        errors.add(root / "pack.yaml", f"key {key}", f"{rel!r} does not exist")
        return None
    return path


def _read_spec(root: Path, errors: _Errors) -> PackSpec | None:
    path = root / "pack.yaml"
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        errors.add(path, f"line {mark.line + 1}" if mark else "", f"not valid YAML: {getattr(e, 'problem', e)}")
        return None
    if not isinstance(raw, dict):
        errors.add(path, "", "must be a mapping of keys (name, version, ...)")
        return None
    try:
        spec = PackSpec.model_validate(raw)
    except ValidationError as e:
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            line = _yaml_line(node, err["loc"])
            msg = "missing required key" if err["type"] == "missing" else err["msg"]
            if err["type"] == "extra_forbidden":
                msg = f"unknown key{did_you_mean(str(err['loc'][-1]), PackSpec.model_fields)}"
            errors.add(path, f"line {line}: key {key}" if line else f"key {key}", msg)
        return None
    if spec.name != root.name:
        errors.add(
            path,
            f"line {_yaml_line(node, ('name',))}: key name",
            f"name {spec.name!r} must equal the folder name {root.name!r}",
        )
    return spec


Item = TypeVar("Item", bound=KnowledgeItem | SeedItem | MCItem | QAItem)


def _read_jsonl(path: Path, model: type[Item], errors: _Errors, topics: list[str]) -> list[Item]:
    items, first_line = [], {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                errors.add(path, f"line {lineno}", "blank line; remove it (one JSON object per line)")
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                errors.add(path, f"line {lineno}", f"not valid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(raw, dict):
                errors.add(path, f"line {lineno}", "must be a JSON object")
                continue
            try:
                item = model.model_validate(raw)
            except ValidationError as e:
                for err in e.errors():
                    key = ".".join(str(p) for p in err["loc"]) or "(object)"
                    msg = "missing required key" if err["type"] == "missing" else err["msg"]
                    if err["type"] == "extra_forbidden":
                        msg = f"unknown key{did_you_mean(str(err['loc'][-1]), model.model_fields)}"
                    errors.add(path, f"line {lineno}: key {key}", msg)
                continue
            if item.id in first_line:
                errors.add(path, f"line {lineno}", f"duplicate id {item.id!r} (first on line {first_line[item.id]})")
                continue
            first_line[item.id] = lineno
            if item.topic not in topics:
                errors.add(
                    path,
                    f"line {lineno}: key topic",
                    f"{item.topic!r} is not one of the pack's topics{did_you_mean(item.topic, topics)} {topics}",
                )
            items.append(item)
    return items


def _check_task_yaml(eval_dir: Path, task_name: str, errors: _Errors) -> None:
    path = eval_dir / f"{task_name}.yaml"
    if not path.is_file():
        errors.add(
            path, "", f"missing lm-eval task file for task {task_name!r}; `kdbench packs new` shows the template"
        )
        return
    try:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_TolerantLoader)  # noqa: S506 (safe subclass)
    except yaml.YAMLError as e:
        errors.add(path, "", f"not valid YAML: {e}")
        return
    if not isinstance(cfg, dict) or cfg.get("task") != task_name:
        errors.add(path, "key task", f"must be {task_name!r} (the name in pack.yaml)")


def _hash_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _generated_seeds(spec: PackSpec, root: Path, errors: _Errors) -> list[SeedItem]:
    out = []
    for i, g in enumerate(spec.generators):
        if g.name not in GENERATORS:
            errors.add(
                root / "pack.yaml",
                f"key generators.{i}.name",
                f"unknown generator {g.name!r}{did_you_mean(g.name, GENERATORS)}; known: {sorted(GENERATORS)}",
            )
            continue
        gen = GENERATORS[g.name]
        topic = g.topic or gen.default_topic
        if topic not in spec.topics:
            errors.add(
                root / "pack.yaml",
                f"key generators.{i}.topic",
                f"topic {topic!r} is not one of the pack's topics {spec.topics}; set `topic:` on the generator",
            )
            continue
        out += [SeedItem.model_validate({"topic": topic, **row}) for row in gen.make(count=g.count, seed=g.seed)]
    return out


def load_pack(name_or_path: str | Path) -> DomainPack:
    """Load and validate a pack; raise PackError naming every problem found."""
    root = find_pack(name_or_path)
    errors = _Errors(root)
    spec = _read_spec(root, errors)
    errors.raise_if_any()
    assert spec is not None

    files: dict[str, Path | None] = {
        "files.knowledge": _inside(root, spec.files.knowledge, errors, "files.knowledge"),
        "files.seeds": _inside(root, spec.files.seeds, errors, "files.seeds"),
    }
    eval_dir = _inside(root, spec.eval.include_path, errors, "eval.include_path")
    for i, t in enumerate(spec.eval.tasks):
        files[f"eval.tasks.{i}.data"] = _inside(root, t.data, errors, f"eval.tasks.{i}.data")
    names = [t.name for t in spec.eval.tasks]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        errors.add(root / "pack.yaml", "key eval.tasks", f"task name {dup!r} appears more than once")
    errors.raise_if_any()
    # every path exists inside the pack from here on (_inside recorded an error for any that does not)
    assert eval_dir is not None
    paths = {key: path for key, path in files.items() if path is not None}

    knowledge = _read_jsonl(paths["files.knowledge"], KnowledgeItem, errors, spec.topics)
    seeds = _read_jsonl(paths["files.seeds"], SeedItem, errors, spec.topics)
    eval_items = {
        t.name: _read_jsonl(paths[f"eval.tasks.{i}.data"], ITEM_MODELS[t.kind], errors, spec.topics)
        for i, t in enumerate(spec.eval.tasks)
    }
    for t in spec.eval.tasks:
        _check_task_yaml(eval_dir, t.name, errors)
    fact_ids = {k.id for k in knowledge}
    for _label, items, path in [("seeds", seeds, paths["files.seeds"])] + [
        (t.name, eval_items[t.name], paths[f"eval.tasks.{i}.data"]) for i, t in enumerate(spec.eval.tasks)
    ]:
        for it in items:
            if it.fact is not None and it.fact not in fact_ids:
                errors.add(path, f"id {it.id}: key fact", f"{it.fact!r} is not an id in {spec.files.knowledge}")
    seeds += _generated_seeds(spec, root, errors)
    errors.raise_if_any()

    train_files = [root / "pack.yaml", paths["files.knowledge"], paths["files.seeds"]]
    pack = DomainPack(
        spec=spec,
        root=root,
        knowledge=knowledge,
        seeds=seeds,
        eval_items=eval_items,
        data_hash=_hash_files([root / "pack.yaml", *paths.values()]),
        train_hash=_hash_files(train_files),
    )
    report = decontam.check(((s.id, s.prompt) for s in seeds), pack.eval_index())
    for seed_id, hit in report.hits.items():
        errors.add(
            paths["files.seeds"],
            f"id {seed_id}",
            f"shares an {report.n}-word run with eval item(s) {', '.join(hit[:3])}: "
            "an evaluation item leaks into the seeds; reword one of them",
        )
    errors.raise_if_any()
    return pack


def iter_pack_texts(pack: DomainPack) -> Iterator[str]:
    """The pack's training-side text (never its evaluation items)."""
    yield pack.spec.description
    yield pack.spec.teacher.system_prompt
    yield from pack.spec.teacher.instructions.values()
    for k in pack.knowledge:
        yield k.question
        yield k.answer
    for s in pack.seeds:
        yield s.prompt
