"""Reading a pack's files defensively: every problem becomes a line naming the file and where.

A pack may come from anyone, so nothing here trusts its bytes: text must be
UTF-8 (a bad byte is reported with its line and offset, not as a traceback),
a JSONL line may not exceed ``MAX_LINE_BYTES`` (a 5 MB line once made
elicitation ask for 13.6 GB), and a YAML file's aliases may not expand to more
than ``MAX_YAML_VALUES`` values (a "billion laughs" in a task YAML's metadata
once ran lm-eval out of memory after 6.5 minutes). YAML is parsed with
PyYAML's safe loader, which builds plain data and imports nothing; ``!function``
tags (lm-eval's way to name Python hooks) are kept as :class:`FunctionRef`
strings in task YAMLs so they can be checked, never imported (pack.yaml takes
no tags at all).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import yaml

from kdbench.errors import PackError

MAX_ERRORS = 20
MAX_LINE_BYTES = 64 * 1024
"""The longest JSONL line (one item) a pack may have, in bytes: items are a question, a fact or a prompt,
a few hundred bytes; 64 KB leaves room for long passages and stops a runaway line before it reaches a model."""
MAX_YAML_VALUES = 100_000
"""The most values (scalars, lists and mappings) a YAML file may expand to once its aliases are followed;
pack.yaml and task YAMLs have a few hundred."""


class Errors:
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


def _not_utf8(data: bytes, e: UnicodeDecodeError, first_line: int = 1, unit: str = "file") -> tuple[str, str]:
    """(where, problem) for a decoding error in ``data`` (a file, or one line of it: ``unit``, starting at line
    ``first_line``): the line, the byte and its column."""
    line = data.count(b"\n", 0, e.start) + first_line
    column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    return (
        f"line {line}",
        f"not UTF-8: byte 0x{data[e.start]:02x} at column {column} (byte {e.start + 1} of the {unit}); "
        "save the file as UTF-8",
    )


def read_text(path: Path, errors: Errors) -> str | None:
    """The file's text, or None after recording why it cannot be read (not UTF-8, unreadable)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        errors.add(path, "", f"cannot be read: {e.strerror or e}")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        errors.add(path, *_not_utf8(data, e))
        return None


def jsonl_lines(path: Path, errors: Errors) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of a JSONL file, read in binary so that an over-long line is
    measured and skipped without being held in memory, and a bad byte names its line."""
    try:
        f = path.open("rb")
    except OSError as e:
        errors.add(path, "", f"cannot be read: {e.strerror or e}")
        return
    with f:
        lineno = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 3)  # the limit, a CR LF, and one byte to know it is over
            if not raw:
                return
            lineno += 1
            size = len(raw.rstrip(b"\r\n"))
            if not raw.endswith(b"\n") and len(raw) == MAX_LINE_BYTES + 3:
                while (more := f.readline(1 << 20)) and not more.endswith(b"\n"):
                    size += len(more)
                size += len(more.rstrip(b"\r\n"))
            if size > MAX_LINE_BYTES:
                errors.add(
                    path,
                    f"line {lineno}",
                    f"line is {size:,} bytes, over the limit of {MAX_LINE_BYTES:,} bytes (64 KB) per item; "
                    "shorten the item or split it into several",
                )
                continue
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                where, problem = _not_utf8(raw, e, first_line=lineno, unit="line")
                errors.add(path, where, problem)


class FunctionRef(str):
    """The text of a ``!function x.y`` tag, with the file and line it was written at (never imported)."""

    file: Path
    line: int


class DataLoader(yaml.SafeLoader):
    """PyYAML's safe loader: plain data only, nothing imported (pack.yaml)."""


class TaskLoader(DataLoader):
    """The safe loader that also reads ``!function`` tags, as FunctionRef (task YAMLs)."""


def _function_ref(loader: TaskLoader, node: yaml.Node) -> FunctionRef:
    if not isinstance(node, yaml.ScalarNode):
        raise yaml.constructor.ConstructorError(
            None, None, "!function takes one name, <module>.<function>", node.start_mark
        )
    ref = FunctionRef(loader.construct_scalar(node))
    ref.file = Path(loader.name)
    ref.line = node.start_mark.line + 1
    return ref


TaskLoader.add_constructor("!function", _function_ref)


def _expanded_size(root: yaml.Node, limit: int) -> tuple[int, yaml.Node]:
    """How many values the node tree holds once aliases are followed, stopping past ``limit``; and the node
    where the count passed it (an alias that refers to a node containing it counts as past the limit).

    Aliases make a YAML file a graph whose shared nodes count once per use: sizes are memoised per node, so a
    bomb of nine-fold aliases is measured in a few steps instead of being expanded."""
    sizes: dict[int, int] = {}
    inside: set[int] = set()  # the nodes being measured: meeting one again is an endless expansion
    where: list[yaml.Node] = []

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in inside:
            where.append(node)
            return limit + 1
        inside.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        total = 1
        for child in children:
            total += size(child)
            if total > limit:
                where.append(node)
                break
        inside.discard(key)
        sizes[key] = total
        return total

    n = size(root)
    return n, (where[0] if where else root)


def load_yaml(
    path: Path, errors: Errors, what: str, loader_class: type[DataLoader] = DataLoader
) -> tuple[yaml.Node, object] | None:
    """(node tree, data) of a YAML file, or None after recording why not: not UTF-8, not YAML, a tag the loader
    does not read, or aliases that expand past MAX_YAML_VALUES. ``what`` says what the file should hold."""
    text = read_text(path, errors)
    if text is None:
        return None
    loader = loader_class(text)
    loader.name = str(path)
    try:
        node = loader.get_single_node()
        if node is None:
            errors.add(path, "", f"is empty; it must hold {what}")
            return None
        n, where = _expanded_size(node, MAX_YAML_VALUES)
        if n > MAX_YAML_VALUES:
            line = where.start_mark.line + 1
            errors.add(
                path,
                f"line {line}",
                f"YAML aliases (*name) expand this file to more than {MAX_YAML_VALUES:,} values, or refer to "
                "themselves: write the values out instead of repeating them through aliases",
            )
            return None
        data = loader.construct_document(node)
    except RecursionError:
        errors.add(path, "", "nested too deeply to read; pack files hold a few levels of keys and lists")
        return None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        if "could not determine a constructor" in str(problem):
            allowed = "the only tag allowed is !function (lm-eval's name for a hook)"
            problem = f"{problem}: {allowed if loader_class is TaskLoader else 'tags are not allowed here'}"
        errors.add(path, f"line {mark.line + 1}" if mark else "", f"not valid YAML: {problem}")
        return None
    finally:
        loader.dispose()
    return node, data


def yaml_line(node: yaml.Node | None, loc: tuple) -> int | None:
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
