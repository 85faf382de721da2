"""Find and load domain packs, with errors that name the file, line or key.

``load_pack`` reads pack.yaml, every JSONL file it names and the eval task
YAMLs, validates them against :mod:`kdbench.packs.schema` and
:mod:`kdbench.packs.taskfiles`, adds generated seeds, and checks that no
evaluation item leaks into the seeds. It reads files as data only and never
imports a pack's Python (:mod:`kdbench.packs.trust` says when that may run).
Problems are gathered and reported together (up to ``reading.MAX_ERRORS``) so
one edit-validate cycle fixes many of them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, get_args

from pydantic import BaseModel, ValidationError

import evals
from kdbench.errors import PackError, did_you_mean
from kdbench.packs import decontam
from kdbench.packs.generators import GENERATORS
from kdbench.packs.reading import Errors, jsonl_lines, load_yaml, read_text, yaml_line
from kdbench.packs.schema import ITEM_MODELS, KnowledgeItem, MCItem, PackSpec, QAItem, SeedItem
from kdbench.packs.taskfiles import check_task_files
from kdbench.packs.trust import REPO_DOMAINS, python_files

SHARED_HOOKS = Path(evals.__file__).with_name("hooks.py")
"""kdbench's data loading and scoring code that every pack's eval/utils.py calls: part of every pack's data hash."""


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
    # every file that decides a training example or a score: pack.yaml, the JSONL files, the task YAMLs, the
    # pack's Python and kdbench's shared hooks (evals/hooks.py); edit one and evaluations are redone
    data_hash: str
    train_hash: str  # pack.yaml, knowledge and seeds only: what a teacher may learn from
    python_files: list[Path]  # code that lm-eval imports when the pack is evaluated (see kdbench.packs.trust)

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

    def gold_answers(self) -> list[tuple[SeedItem, str]]:
        """Seeds with a reference answer a person wrote: the seed's own ``answer``, else the statement of the
        fact it names (the `gold` row trains on these, without a teacher)."""
        facts = {k.id: k.statement for k in self.knowledge}
        out = []
        for s in self.seeds:
            answer = s.answer or (facts.get(s.fact) if s.fact else None)
            if answer:
                out.append((s, answer))
        return out

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


def _inside(root: Path, rel: str, errors: Errors, key: str, kind: str = "file") -> Path | None:
    """``root/rel`` if it stays inside the pack folder and is a ``kind`` ("file" or "folder"), else record why
    not."""
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        errors.add(root / "pack.yaml", f"key {key}", f"path {rel!r} escapes the pack folder; use a path inside {root}")
        return None
    if not path.exists():
        errors.add(root / "pack.yaml", f"key {key}", f"{rel!r} does not exist")
        return None
    if kind == "file" and not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file"
        errors.add(root / "pack.yaml", f"key {key}", f"{rel!r} is {what}; give the path of a JSONL file")
        return None
    if kind == "folder" and not path.is_dir():
        errors.add(root / "pack.yaml", f"key {key}", f"{rel!r} is not a folder; give the folder of the task YAMLs")
        return None
    return path


def _read_spec(root: Path, errors: Errors) -> PackSpec | None:
    path = root / "pack.yaml"
    loaded = load_yaml(path, errors, "the pack's keys (name, version, ...)")
    if loaded is None:
        return None
    node, raw = loaded
    if not isinstance(raw, dict):
        errors.add(path, "", "must be a mapping of keys (name, version, ...)")
        return None
    try:
        spec = PackSpec.model_validate(raw)
    except ValidationError as e:
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            line = yaml_line(node, err["loc"])
            errors.add(path, f"line {line}: key {key}" if line else f"key {key}", _describe(err, PackSpec))
        return None
    if spec.name != root.name:
        errors.add(
            path,
            f"line {yaml_line(node, ('name',))}: key name",
            f"name {spec.name!r} must equal the folder name {root.name!r}",
        )
    return spec


Item = TypeVar("Item", bound=KnowledgeItem | SeedItem | MCItem | QAItem)


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys allowed where an unknown key ``loc`` was found: the fields of the model that holds it."""
    for part in loc[:-1]:
        if isinstance(part, int) or part not in model.model_fields:
            continue  # an index into a list, or a dict key: the model stays the element's
        annotation = model.model_fields[part].annotation
        inner = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return []
        model = inner[0]
    return list(model.model_fields)


def _describe(err, model: type[BaseModel]) -> str:
    """A pydantic error as the problem a pack author reads."""
    if err["type"] == "missing":
        return "missing required key"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, err["loc"])
        return f"unknown key{did_you_mean(str(err['loc'][-1]), allowed)}; allowed: {', '.join(allowed)}"
    if err["type"] == "value_error" and "error" in err.get("ctx", {}):
        return str(err["ctx"]["error"])  # our validators' messages, without pydantic's "Value error, "
    return err["msg"]


def _read_jsonl(path: Path, model: type[Item], errors: Errors, topics: list[str], empty: str | None) -> list[Item]:
    """The file's items; ``empty``: the problem to record when the file has no line at all (None: allowed)."""
    items, first_line, lines = [], {}, 0
    for lineno, line in jsonl_lines(path, errors):
        lines += 1
        if not line.strip():
            errors.add(path, f"line {lineno}", "blank line; remove it (one JSON object per line)")
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            errors.add(path, f"line {lineno}", f"not valid JSON ({e.msg} at column {e.colno})")
            continue
        except RecursionError:
            errors.add(path, f"line {lineno}", "nested too deeply to read; an item is one flat JSON object")
            continue
        if not isinstance(raw, dict):
            errors.add(path, f"line {lineno}", "must be a JSON object")
            continue
        try:
            item = model.model_validate(raw)
        except ValidationError as e:
            for err in e.errors():
                key = ".".join(str(p) for p in err["loc"]) or "(object)"
                errors.add(path, f"line {lineno}: key {key}", _describe(err, model))
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
    if lines == 0 and empty is not None and path.stat().st_size == 0:
        errors.add(path, "", empty)
    return items


def _hash_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _generated_seeds(spec: PackSpec, root: Path, errors: Errors) -> list[SeedItem]:
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
        if g.count > gen.max_count:
            errors.add(
                root / "pack.yaml",
                f"key generators.{i}.count",
                f"{g.name} can produce at most {gen.max_count:,} distinct items; {g.count:,} asked for. "
                f"Use a count up to {gen.max_count:,}",
            )
            continue
        out += [SeedItem.model_validate({"topic": topic, **row}) for row in gen.make(count=g.count, seed=g.seed)]
    return out


def load_pack(name_or_path: str | Path) -> DomainPack:
    """Load and validate a pack; raise PackError naming every problem found."""
    root = find_pack(name_or_path)
    errors = Errors(root)
    spec = _read_spec(root, errors)
    errors.raise_if_any()
    assert spec is not None

    files: dict[str, Path | None] = {
        "files.knowledge": _inside(root, spec.files.knowledge, errors, "files.knowledge"),
        "files.seeds": _inside(root, spec.files.seeds, errors, "files.seeds"),
    }
    eval_dir = _inside(root, spec.eval.include_path, errors, "eval.include_path", kind="folder")
    for i, t in enumerate(spec.eval.tasks):
        files[f"eval.tasks.{i}.data"] = _inside(root, t.data, errors, f"eval.tasks.{i}.data")
    names = [t.name for t in spec.eval.tasks]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        errors.add(root / "pack.yaml", "key eval.tasks", f"task name {dup!r} appears more than once")
    errors.raise_if_any()
    # every path exists inside the pack from here on (_inside recorded an error for any that does not)
    assert eval_dir is not None
    paths = {key: path for key, path in files.items() if path is not None}
    task_data = {t.name: paths[f"eval.tasks.{i}.data"] for i, t in enumerate(spec.eval.tasks)}

    before_knowledge = len(errors.items)
    knowledge = _read_jsonl(
        paths["files.knowledge"],
        KnowledgeItem,
        errors,
        spec.topics,
        empty="is empty: add the domain's facts, one JSON object per line (the embedded teacher learns from them)",
    )
    seeds = _read_jsonl(
        paths["files.seeds"],
        SeedItem,
        errors,
        spec.topics,
        empty=None
        if spec.generators
        else "is empty and pack.yaml has no generators: add the prompts the teacher is asked, one JSON object per line",
    )
    eval_items = {
        t.name: _read_jsonl(
            task_data[t.name],
            ITEM_MODELS[t.kind],
            errors,
            spec.topics,
            empty=f"is empty: task {t.name!r} needs at least one item to score, one JSON object per line",
        )
        for t in spec.eval.tasks
    }
    task_files = check_task_files(root, spec, eval_dir, task_data, errors)
    code = python_files(root)
    for py in code:  # lm-eval imports them: they must be the pack's own, readable files
        if not py.resolve().is_relative_to(root.resolve()):
            errors.add(py, "", f"is a link to {py.resolve()}, outside the pack folder; copy the file into the pack")
        else:
            read_text(py, errors)
    fact_ids = {k.id for k in knowledge}
    knowledge_read = len(errors.items) == before_knowledge  # else items naming a broken fact would bury its error
    for items, path in [(seeds, paths["files.seeds"])] + [(eval_items[t], task_data[t]) for t in names]:
        for it in items:
            if knowledge_read and it.fact is not None and it.fact not in fact_ids:
                errors.add(path, f"id {it.id}: key fact", f"{it.fact!r} is not an id in {spec.files.knowledge}")
    seeds += _generated_seeds(spec, root, errors)
    errors.raise_if_any()

    train_files = [root / "pack.yaml", paths["files.knowledge"], paths["files.seeds"]]
    scored = [root / "pack.yaml", *paths.values(), *task_files, *code, SHARED_HOOKS]
    pack = DomainPack(
        spec=spec,
        root=root,
        knowledge=knowledge,
        seeds=seeds,
        eval_items=eval_items,
        data_hash=_hash_files(list(dict.fromkeys(scored))),
        train_hash=_hash_files(train_files),
        python_files=code,
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
        yield from k.texts
    for s in pack.seeds:
        yield s.prompt
