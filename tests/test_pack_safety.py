"""Pack files are read as data, defensively: input that would fail minutes into a run (or never end) is
refused at validation with a short message naming the file and the line or key."""

import json
import re
import time
from pathlib import Path

import pytest

from kdbench.errors import PackError
from kdbench.packs import load_pack
from kdbench.packs.reading import MAX_LINE_BYTES

# ---- helpers ---------------------------------------------------------------------------------------------


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def refused(root: Path, *patterns: str) -> str:
    """load_pack(root) fails; each pattern (a regex) is in the message, which is returned."""
    with pytest.raises(PackError) as e:
        load_pack(root)
    msg = str(e.value)
    for p in patterns:
        assert re.search(p, msg), f"{p!r} not in:\n{msg}"
    return msg


def mc_line(**over) -> str:
    item = {
        "id": "mc-x",
        "topic": "torts",
        "question": "Which tort protects a person's reputation against false statements of fact?",
        "choices": ["defamation", "battery", "trespass", "nuisance"],
        "answer": 0,
    }
    return json.dumps({**item, **over})


def append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")


BOMB = """metadata:
  version: 1.0
  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
  i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


# ---- YAML is data: no tags but !function, no alias bombs -----------------------------------------


def test_python_tags_are_refused(copy_pack):
    root = copy_pack()
    edit(root / "eval/law_mc.yaml", "test_split: test", "test_split: !!python/name:os.system")
    refused(root, r"law_mc.yaml:line 6: not valid YAML: .*python/name:os.system.*the only tag allowed is !function")


@pytest.mark.parametrize("where", ["eval/law_mc.yaml", "pack.yaml"])
def test_yaml_alias_bomb_is_refused_at_once(copy_pack, where):
    root = copy_pack()
    path = root / where
    text = path.read_text()
    path.write_text(text.replace("metadata:\n  version: 1.0\n", "") + BOMB if "metadata:" in text else text + BOMB)
    t0 = time.perf_counter()
    refused(root, rf"{re.escape(where)}:line \d+: YAML aliases \(\*name\) expand this file to more than 100,000 values")
    assert time.perf_counter() - t0 < 5


# ---- C. refused at validation, with a short message ------------------------------------------------------


def test_empty_seeds_file_is_refused_unless_generators_add_seeds(copy_pack):
    root = copy_pack()
    (root / "seeds.jsonl").write_text("")
    refused(root, r"law/seeds.jsonl: is empty and pack.yaml has no generators: add the prompts the teacher is asked")
    science = copy_pack("science")
    (science / "seeds.jsonl").write_text("")
    assert all(s.id.startswith("gen-") for s in load_pack(science).seeds)


def test_empty_eval_data_and_knowledge_files_are_refused(copy_pack):
    root = copy_pack()
    (root / "eval/data/qa.jsonl").write_text("")
    (root / "knowledge.jsonl").write_text("")
    refused(
        root,
        r"law/eval/data/qa.jsonl: is empty: task 'law_qa' needs at least one item to score",
        r"law/knowledge.jsonl: is empty: add the domain's facts",
    )


def test_over_long_jsonl_line_is_refused_without_being_read_whole(copy_pack):
    root = copy_pack()
    lines = (root / "knowledge.jsonl").read_text().splitlines()
    big = json.loads(lines[2])
    big["answer"] = "x" * 5_000_000
    lines[2] = json.dumps(big)
    (root / "knowledge.jsonl").write_text("\n".join(lines) + "\n")
    size = len(lines[2].encode())
    refused(
        root,
        rf"law/knowledge.jsonl:line 3: line is {size:,} bytes, over the limit of {MAX_LINE_BYTES:,} bytes \(64 KB\)",
    )


@pytest.mark.parametrize(
    "answer, shown", [("0", "the string '0'"), (True, "true/false"), (1.0, "the number 1.0")], ids=str
)
def test_mc_answer_must_be_an_integer_index(copy_pack, answer, shown):
    root = copy_pack()
    append(root / "eval/data/mc.jsonl", mc_line(answer=answer))
    refused(
        root,
        rf"mc.jsonl:line \d+: key answer: answer must be the index of the right choice as a JSON integer \(0..3\), "
        rf"not {re.escape(shown)}",
    )


def test_duplicate_or_empty_mc_choices_are_refused(copy_pack):
    root = copy_pack()
    append(root / "eval/data/mc.jsonl", mc_line(id="mc-dup", choices=["defamation", "battery", "Defamation", "x"]))
    append(root / "eval/data/mc.jsonl", mc_line(id="mc-empty", choices=["defamation", " ", "trespass", "x"]))
    refused(
        root,
        r"key choices: choices 0 and 2 are the same \('Defamation'\); each choice must differ",
        r"key choices: choice 1 is empty",
    )


def test_generator_count_beyond_what_it_can_produce_is_refused(copy_pack):
    from kdbench.packs.generators import GENERATORS

    root = copy_pack("science")
    edit(root / "pack.yaml", "{name: stoichiometry, count: 30", "{name: stoichiometry, count: 2000")
    t0 = time.perf_counter()
    refused(
        root,
        r"science/pack.yaml:key generators.2.count: stoichiometry can produce at most 1,600 distinct items; "
        r"2,000 asked for",
    )
    assert time.perf_counter() - t0 < 10
    for name, gen in GENERATORS.items():  # each generator is finite: more than it can make is refused at once
        with pytest.raises(ValueError, match=f"{name} can produce at most"):
            gen.make(count=gen.max_count + 1)
    for name in ("stoichiometry", "unit_conversion", "kinematics"):  # and the maxima are reachable
        rows = GENERATORS[name].make(count=GENERATORS[name].max_count)
        assert len({r["prompt"] for r in rows}) == GENERATORS[name].max_count


@pytest.mark.parametrize(
    "rel, where",
    [
        ("knowledge.jsonl", r"line 3: not UTF-8: byte 0xff at column 10 \(byte 10 of the line\)"),
        ("pack.yaml", r"line 2: not UTF-8: byte 0xff at column 10 \(byte \d+ of the file\)"),
        ("eval/law_mc.yaml", r"line 2: not UTF-8: byte 0xff"),
    ],
)
def test_non_utf8_byte_names_file_and_line(copy_pack, rel, where):
    root = copy_pack()
    path = root / rel
    lines = path.read_bytes().split(b"\n")
    index = 2 if rel == "knowledge.jsonl" else 1
    lines[index] = lines[index][:9] + b"\xff" + lines[index][9:]
    path.write_bytes(b"\n".join(lines))
    refused(root, rf"law/{re.escape(rel)}:{where}")


def test_validate_reports_a_broken_pack_and_still_validates_the_others(copy_pack, capsys):
    from kdbench.cli import main

    broken = copy_pack()
    (broken / "seeds.jsonl").write_bytes(b'{"id": "s\xff", "topic": "torts", "prompt": "p"}\n')
    assert main(["packs", "validate", str(broken), "science"]) == 1
    out, err = capsys.readouterr()
    assert "FAILED: pack at" in err and "law/seeds.jsonl:line 1: not UTF-8" in err
    assert "ok: science" in out


@pytest.mark.parametrize("key", ["seeds", "knowledge"])
def test_pack_file_pointing_at_a_folder_is_refused(copy_pack, key):
    root = copy_pack()
    (root / "data").mkdir()
    edit(root / "pack.yaml", f"{key}: {key}.jsonl", f"{key}: data")
    refused(root, rf"law/pack.yaml:key files.{key}: 'data' is a folder; give the path of a JSONL file")
