"""A pack is data until the user says otherwise: loading and validating it reads files and imports nothing,
everything its task YAMLs point at stays inside the pack folder, its Python runs only when it is one of
kdbench's own packs or the run config trusts it, whatever decides a score is in the evaluation key, and input
that would fail minutes into a run (or never end) is refused at validation with a short message."""

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from kdbench.config import RunConfig, load_config
from kdbench.errors import PackError, UserError
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


# ---- A. task YAMLs: nothing imported, nothing outside the pack ---------------------------------------------


def test_function_naming_a_stdlib_module_is_refused(copy_pack):
    root = copy_pack()
    edit(root / "eval/law_qa.yaml", "!function utils.process_generation", "!function os.system")
    refused(
        root,
        r"law/eval/law_qa.yaml:line 14: key process_results: !function 'os.system': eval/os.py is not a file of "
        r"the pack, so lm-eval would import 'os' from the Python environment",
    )


def test_function_with_leading_dots_is_refused(copy_pack):
    root = copy_pack()
    edit(root / "eval/law_mc.yaml", "!function utils.load", "!function ..evil.load")
    refused(root, r"law_mc.yaml:line 3: key custom_dataset: !function '..evil.load' must be <module>.<function>")


def test_function_whose_dotted_module_leaves_the_pack_is_refused(copy_pack, tmp_path):
    root = copy_pack()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.py").write_text("def load(**kw):\n    return None\n")
    (root / "eval/sub").symlink_to(outside)
    edit(root / "eval/law_mc.yaml", "!function utils.load", "!function sub.evil.load")
    refused(root, rf"key custom_dataset: !function 'sub.evil.load' names {re.escape(str(outside))}/evil.py, outside")


@pytest.mark.parametrize(
    "old, new, key",
    [
        ("data_file: data/mc.jsonl", "data_file: ../../../etc/passwd", "dataset_kwargs.data_file"),
        ("  version: 1.0", "  version: 1.0\n  data_file: /etc/passwd", "metadata.data_file"),
        (
            "data_file: data/mc.jsonl",
            "data_file: data/mc.jsonl\n  data_files: [../../x.csv]",
            "dataset_kwargs.data_files",
        ),
    ],
)
def test_data_path_outside_the_pack_is_refused(copy_pack, old, new, key):
    root = copy_pack()
    edit(root / "eval/law_mc.yaml", old, new)
    refused(root, rf"law_mc.yaml:line \d+: key {re.escape(key)}: path '[^']+' escapes the pack folder")


def test_task_without_the_custom_dataset_hook_is_refused(copy_pack):
    root = copy_pack()
    edit(root / "eval/law_mc.yaml", "custom_dataset: !function utils.load\n", "dataset_path: json\n")
    refused(
        root,
        r"law/eval/law_mc.yaml: missing key custom_dataset: a pack's task loads its items through the pack's hook "
        r"\(`custom_dataset: !function utils.load` with `dataset_kwargs: \{data_file: data/mc.jsonl\}`\), so that "
        r"it reads eval/data/mc.jsonl, the data pack.yaml gives task 'law_mc' \(key eval.tasks.0.data\)",
    )


def test_task_reading_another_file_than_pack_yaml_says_is_refused(copy_pack):
    root = copy_pack()
    edit(root / "eval/law_mc.yaml", "data_file: data/mc.jsonl", "data_file: data/qa.jsonl")
    refused(
        root,
        r"law_mc.yaml:line 5: key dataset_kwargs.data_file: 'data/qa.jsonl' reads eval/data/qa.jsonl, but pack.yaml "
        r"gives task 'law_mc' the data eval/data/mc.jsonl \(key eval.tasks.0.data\).*set data_file: data/mc.jsonl",
    )


def test_include_outside_the_pack_and_stray_task_yamls_are_refused(copy_pack, tmp_path):
    root = copy_pack()
    (tmp_path / "other.yaml").write_text("process_results: !function utils.process_generation\n")
    edit(root / "eval/law_qa.yaml", "test_split: test", "include: ../../other.yaml\ntest_split: test")
    (root / "eval/a_law_mc.yaml").write_text((root / "eval/law_mc.yaml").read_text())
    refused(
        root,
        r"law_qa.yaml:line \d+: key include: path '../../other.yaml' escapes the pack folder",
        r"law/eval/a_law_mc.yaml: lm-eval reads every .yaml file in the eval folder, and this one is not the task "
        r"file of a task in pack.yaml \(tasks: law_mc, law_qa\)",
    )


def test_included_file_inside_the_pack_is_checked_like_the_task(copy_pack):
    root = copy_pack()
    (root / "eval/_common").write_text("process_results: !function os.system\n")
    edit(root / "eval/law_qa.yaml", "test_split: test", "include: _common\ntest_split: test")
    edit(root / "eval/law_qa.yaml", "process_results: !function utils.process_generation\n", "")
    refused(root, r"law/eval/_common:line 1: key process_results: !function 'os.system'")


def test_a_file_included_by_several_tasks_loads_and_an_include_loop_is_refused(copy_pack):
    root = copy_pack()
    (root / "eval/_common").write_text("test_split: test\n")
    for task in ("law_mc", "law_qa"):
        edit(root / f"eval/{task}.yaml", "test_split: test", "include: _common")
    load_pack(root)
    (root / "eval/_common").write_text("include: law_mc.yaml\ntest_split: test\n")
    refused(root, r"law/eval/_common:line 1: key include: 'law_mc.yaml' includes files in a loop")


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


def test_validation_never_imports_a_packs_python(copy_pack, tmp_path, capsys):
    from kdbench.cli import main

    root = copy_pack()
    marker = tmp_path / "imported"
    (root / "eval/utils.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n" + (root / "eval/utils.py").read_text()
    )
    load_pack(root)
    assert main(["packs", "validate", str(root)]) == 0 and main(["packs", "list"]) == 0
    assert "ok: law" in capsys.readouterr().out
    assert not marker.exists()


def test_a_pack_from_elsewhere_runs_its_python_only_when_trusted(copy_pack):
    from kdbench.evaluate import evaluate, tasks_for

    root = copy_pack()
    pack = load_pack(root)
    cfg = load_config(overrides={"pack": str(root)})
    message = (
        f"pack 'law' at {root} is not one of kdbench's own packs, and evaluating it runs its code: its Python files "
        "(eval/utils.py) and its task YAMLs, which lm-eval imports and executes as they are. Read them, then allow it "
        "with --trust-pack-code, or --set trust_pack_code=true (trust_pack_code: true in a run config)."
    )
    with pytest.raises(UserError) as e:
        tasks_for(pack, cfg)  # what preflight calls: a run stops before anything is written
    assert message in str(e.value)
    with pytest.raises(UserError, match="--trust-pack-code"):
        evaluate("no-model-needed", pack, cfg, root / "home")  # refused before lm-eval is imported
    assert not (root / "home").exists()
    trusted = load_config(overrides={"pack": str(root), "trust_pack_code": True})
    assert tasks_for(pack, trusted) == ["law_mc", "law_qa"]
    assert tasks_for(load_pack("law"), load_config(overrides={"pack": "law"})) == ["law_mc", "law_qa"]  # our own


def test_preflight_refuses_an_untrusted_pack(copy_pack):
    from kdbench.preflight import preflight

    root = copy_pack()
    with pytest.raises(UserError, match=r"--set trust_pack_code=true"):
        preflight(load_config(overrides={"pack": str(root)}))


def test_trust_pack_code_is_a_documented_config_key():
    field = RunConfig.model_fields["trust_pack_code"]
    assert field.default is False and "domains/" in (field.description or "")


# ---- B. whatever decides a score is in the evaluation key ------------------------------------------------


@pytest.mark.parametrize("edited", ["task YAML", "pack utils.py", "evals/hooks.py"])
def test_editing_what_decides_a_score_changes_the_evaluation_key(copy_pack, tmp_path, monkeypatch, edited):
    import kdbench.packs.loader as loader
    from kdbench.evaluate import eval_key

    root = copy_pack()
    hooks = tmp_path / "hooks.py"
    shutil.copyfile(loader.SHARED_HOOKS, hooks)
    monkeypatch.setattr(loader, "SHARED_HOOKS", hooks)
    cfg = load_config(overrides={"pack": str(root), "trust_pack_code": True})
    before = load_pack(root)
    if edited == "task YAML":
        edit(root / "eval/law_qa.yaml", "max_gen_toks: 48", "max_gen_toks: 8")
    elif edited == "pack utils.py":
        append(root / "eval/utils.py", "# scoring changed")
    else:
        append(hooks, "# scoring changed")
    after = load_pack(root)
    tasks = ["law_mc", "law_qa"]
    assert eval_key("m", before, cfg, tasks) != eval_key("m", after, cfg, tasks)
    assert before.train_hash == after.train_hash  # what the teacher learns from: models are not rebuilt


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
        ("eval/utils.py", r"line 2: not UTF-8: byte 0xff"),
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
