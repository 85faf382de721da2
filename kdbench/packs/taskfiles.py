"""Checks of a pack's lm-eval task YAMLs, made without importing anything.

lm-eval runs what a task YAML says: ``!function m.f`` imports ``m`` (a file
beside the YAML, or, when there is none, any importable module such as ``os``)
and calls ``f``; ``dataset_kwargs`` go to the data hook, which opens the file
they name; ``include:`` reads another YAML. A pack's task YAMLs are therefore
held to the same rule as pack.yaml: everything they point at stays inside the
pack folder. Each task must load its data through a hook of the pack
(``custom_dataset``) from the very file pack.yaml gives it, because that file
is the one kdbench validates, decontaminates and hashes. And since lm-eval
indexes every ``.yaml`` file of the eval folder (a stray one can take over a
task's name), that folder holds the pack's task files and nothing else ending
in ``.yaml``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from kdbench.packs.reading import Errors, FunctionRef, TaskLoader, load_yaml, yaml_line
from kdbench.packs.schema import PackSpec

PATH_KEYS = ("data_file", "data_files", "data_dir", "dataset_path")
"""Keys whose values are paths to data, at any depth of a task YAML: each must stay inside the pack folder."""
UNSUPPORTED = {
    "group": "a group of tasks; pack.yaml lists the pack's tasks one by one",
    "class": "a task written as a Python class; kdbench runs tasks described in YAML",
}
_IGNORED_DIRS = {"__pycache__", ".ipynb_checkpoints"}  # what lm-eval skips when it indexes a folder
_FUNCTION = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
_MAX_INCLUDE_DEPTH = 8

Origins = dict[str, tuple[Path, yaml.Node]]  # top-level key -> the file and node tree it was read from


def check_task_files(root: Path, spec: PackSpec, eval_dir: Path, data: dict[str, Path], errors: Errors) -> list[Path]:
    """Check the task YAML of every task in pack.yaml (``data``: task name -> its data file) and the files they
    include; record each problem in ``errors``. Returns every YAML file read, for the pack's hash."""
    expected = {(eval_dir / f"{t.name}.yaml").resolve() for t in spec.eval.tasks}
    for stray in sorted(eval_dir.glob("**/*.yaml")):
        if any(part in _IGNORED_DIRS for part in stray.parts) or stray == root / "pack.yaml":
            continue
        if stray.resolve() not in expected:
            errors.add(
                stray,
                "",
                "lm-eval reads every .yaml file in the eval folder, and this one is not the task file of a task in "
                f"pack.yaml (tasks: {', '.join(t.name for t in spec.eval.tasks)}); remove it, or, if a task YAML "
                "includes it, give it a name that does not end in .yaml",
            )
    read: list[Path] = []
    for i, t in enumerate(spec.eval.tasks):
        path = eval_dir / f"{t.name}.yaml"
        if not path.is_file():
            errors.add(
                path, "", f"missing lm-eval task file for task {t.name!r}; `kdbench packs new` shows the template"
            )
            continue
        loaded = _load(path, root, errors, read, chain=())
        if loaded is not None:
            _check_task(path, loaded, root, t.name, i, data[t.name], errors)
    return read


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _load(
    path: Path, root: Path, errors: Errors, read: list[Path], chain: tuple[Path, ...]
) -> tuple[dict, Origins] | None:
    """A task YAML with its ``include:`` files merged in as lm-eval merges them (the including file's keys
    win), and where each top-level key was written. ``read`` gathers every file read; ``chain`` is the files
    that include this one."""
    if not _inside(path, root):
        errors.add(path, "", f"is a link to {path.resolve()}, outside the pack folder; copy the file into the pack")
        return None
    if path not in read:
        read.append(path)
    loaded = load_yaml(path, errors, "an lm-eval task (task, custom_dataset, dataset_kwargs, ...)", TaskLoader)
    if loaded is None:
        return None
    node, cfg = loaded
    if not isinstance(cfg, dict):
        errors.add(path, "", "must be a mapping of lm-eval task keys (task, custom_dataset, dataset_kwargs, ...)")
        return None
    cfg = {str(k): v for k, v in cfg.items()}
    origins: Origins = dict.fromkeys(cfg, (path, node))
    includes = cfg.pop("include", None)
    if includes is None:
        return cfg, origins
    merged: dict = {}
    merged_origins: Origins = {}
    where = f"line {yaml_line(node, ('include',))}: key include"
    for inc in includes if isinstance(includes, list) else [includes]:
        if not isinstance(inc, str):
            errors.add(path, where, "must be the path of a YAML file, or a list of them")
            continue
        target = path.parent / inc
        if not _inside(target, root):
            errors.add(path, where, f"path {inc!r} escapes the pack folder; use a path inside {root}")
        elif not target.is_file():
            errors.add(path, where, f"{inc!r} is not a file")
        elif len(chain) >= _MAX_INCLUDE_DEPTH or target.resolve() in {*chain, path.resolve()}:
            errors.add(path, where, f"{inc!r} includes files in a loop (or more than {_MAX_INCLUDE_DEPTH} deep)")
        else:
            sub = _load(target, root, errors, read, (*chain, path.resolve()))
            if sub is not None:
                merged.update(sub[0])
                merged_origins.update(sub[1])
    merged.update(cfg)
    merged_origins.update({k: v for k, v in origins.items() if k != "include"})
    return merged, merged_origins


def _walk(value, loc: tuple = ()) -> Iterator[tuple[tuple, object]]:
    """(location, value) of every value in a YAML tree, containers and leaves."""
    yield loc, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, (*loc, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, (*loc, i))


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _check_task(
    path: Path, loaded: tuple[dict, Origins], root: Path, name: str, index: int, data: Path, errors: Errors
) -> None:
    cfg, origins = loaded

    def where(loc: tuple) -> tuple[Path, str]:
        """The file a key was written in and 'line N: key a.b' there."""
        file, node = origins.get(str(loc[0]), (path, None))
        line = yaml_line(node, loc)
        key = ".".join(str(p) for p in loc)
        return file, f"line {line}: key {key}" if line else f"key {key}"

    if cfg.get("task") != name:
        errors.add(path, "key task", f"must be {name!r} (the name in pack.yaml)")
    for key, what in UNSUPPORTED.items():
        if key in cfg:
            errors.add(*where((key,)), f"{what}: not supported in a pack; describe one task per file")
    for loc, value in _walk(cfg):
        if isinstance(value, FunctionRef):
            problem = _module_file(value, root)[1]
            if problem:
                errors.add(value.file, f"line {value.line}: key {'.'.join(str(p) for p in loc)}", problem)
        if loc and isinstance(loc[-1], str) and loc[-1] in PATH_KEYS:
            for text in _strings(value):
                if not _inside(path.parent / text, root):
                    errors.add(*where(loc), f"path {text!r} escapes the pack folder; use a path inside {root}")
    _check_data_hook(path, cfg, root, name, index, data, errors, where)


def _module_file(ref: FunctionRef, root: Path) -> tuple[Path | None, str]:
    """The module file a ``!function`` names if it is a .py file of the pack, else (None, why not).

    lm-eval looks for ``a/b.py`` beside the YAML for ``!function a.b.f`` and, when there is no such file,
    imports ``a.b`` from the Python environment: so the file must exist, inside the pack."""
    if not _FUNCTION.match(ref):
        return None, (
            f"!function {str(ref)!r} must be <module>.<function> (e.g. utils.load), the module a .py file of the "
            "pack named from the YAML's folder: letters, digits and underscores, no leading dots, slashes or spaces"
        )
    module = ref.rpartition(".")[0]
    file = ref.file.parent / (module.replace(".", "/") + ".py")
    if not _inside(file, root):
        return None, f"!function {str(ref)!r} names {file.resolve()}, outside the pack folder"
    if not file.is_file():
        return None, (
            f"!function {str(ref)!r}: {os.path.relpath(file, root)} is not a file of the pack, so lm-eval would "
            f"import {module!r} from the Python environment (the standard library or an installed package); "
            "a pack may only call functions of its own .py files"
        )
    return file, ""


def _check_data_hook(
    path: Path,
    cfg: dict,
    root: Path,
    name: str,
    index: int,
    data: Path,
    errors: Errors,
    where: Callable[[tuple], tuple[Path, str]],
) -> None:
    """The task reads its items through a hook of the pack, from the file pack.yaml gives it."""
    rel_data = os.path.relpath(data, root)
    hook = cfg.get("custom_dataset")
    if not isinstance(hook, FunctionRef):
        file, at = (path, "") if hook is None else where(("custom_dataset",))
        errors.add(
            file,
            at,
            f"{'missing key custom_dataset' if hook is None else 'custom_dataset must be a !function'}: a pack's "
            "task loads its items through the pack's hook (`custom_dataset: !function utils.load` with "
            f"`dataset_kwargs: {{data_file: {os.path.relpath(data, path.parent)}}}`), so that it reads {rel_data}, "
            f"the data pack.yaml gives task {name!r} (key eval.tasks.{index}.data)",
        )
        return
    module = _module_file(hook, root)[0]
    if module is None:
        return  # recorded with the other !function tags
    kwargs = cfg.get("dataset_kwargs")
    data_file = kwargs.get("data_file") if isinstance(kwargs, dict) else None
    suggestion = os.path.relpath(data, module.parent)
    if not isinstance(data_file, str):
        errors.add(
            *where(("dataset_kwargs", "data_file") if isinstance(kwargs, dict) else ("dataset_kwargs",)),
            f"missing: the task must read {rel_data}, the data pack.yaml gives task {name!r} (key eval.tasks."
            f"{index}.data); set dataset_kwargs.data_file: {suggestion} (relative to {module.name}'s folder)",
        )
        return
    read = (module.parent / data_file).resolve()
    if not read.is_relative_to(root.resolve()):
        if module.parent != path.parent:  # else recorded already, as a path that escapes from the YAML's folder
            errors.add(
                *where(("dataset_kwargs", "data_file")),
                f"{data_file!r} read from {module.name}'s folder is {read}, outside the pack folder",
            )
    elif read != data.resolve():
        errors.add(
            *where(("dataset_kwargs", "data_file")),
            f"{data_file!r} reads {os.path.relpath(read, root.resolve())}, but pack.yaml gives task {name!r} the "
            f"data {rel_data} (key eval.tasks.{index}.data): kdbench validates and hashes that file, so the task "
            f"must read it; set data_file: {suggestion}",
        )
    metadata = cfg.get("metadata")
    if isinstance(metadata, dict) and isinstance(kwargs, dict):
        for key in sorted(set(map(str, metadata)) & set(map(str, kwargs))):
            errors.add(
                *where(("metadata", key)),
                f"also given as dataset_kwargs.{key}; lm-eval passes both to the data hook, which then fails: "
                "keep it in dataset_kwargs only",
            )
