"""Every pack in domains/ is valid, big enough, decontaminated and usable by lm-eval;
bad packs fail with errors naming the file, the line or key, and the problem."""

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from kdbench.errors import PackError
from kdbench.packs import decontam, find_pack, list_packs, load_pack
from kdbench.packs.generators import GENERATORS, verify
from kdbench.packs.scaffold import scaffold
from tests.conftest import DOMAINS, PACKS

FOUR = {"law", "medicine", "finance", "science"}


def test_the_four_verticals_exist():
    assert FOUR <= set(PACKS)
    assert FOUR <= set(list_packs())


@pytest.mark.parametrize("name", PACKS)
def test_pack_valid_and_complete(name):
    pack = load_pack(name)
    assert pack.name == name and pack.root == DOMAINS / name
    kinds = Counter(t.kind for t in pack.spec.eval.tasks)
    assert kinds["multiple_choice"] >= 1 and kinds["generation"] >= 1
    if name in FOUR:  # the shipped verticals carry the sizes the product promises
        assert len(pack.spec.topics) >= 8
        file_seeds = [s for s in pack.seeds if not s.id.startswith("gen-")]
        assert len(file_seeds) >= 300
        assert all(sum(s.topic == t for s in file_seeds) > 0 for t in pack.spec.topics)
        for t in pack.spec.eval.tasks:
            assert len(pack.eval_items[t.name]) >= (200 if t.kind == "multiple_choice" else 80), t.name
        assert pack.spec.public_tasks


@pytest.mark.parametrize("name", PACKS)
def test_no_eval_item_leaks_into_seeds_or_knowledge(name):
    pack = load_pack(name)
    index = pack.eval_index()
    seeds = decontam.check(((s.id, s.prompt) for s in pack.seeds), index)
    facts = decontam.check(((k.id, f"{k.question} {k.answer}") for k in pack.knowledge), index)
    assert seeds.hits == {} and facts.hits == {}


@pytest.mark.parametrize("name", PACKS)
def test_mc_answers_balanced_and_items_well_formed(name):
    pack = load_pack(name)
    for t in pack.spec.eval.tasks:
        items = pack.eval_items[t.name]
        if t.kind == "multiple_choice":
            pos = Counter(i.answer for i in items)
            assert max(pos.values()) / len(items) < 0.4, f"right answers bunch at one position: {pos}"
            assert all(len(set(i.choices)) == len(i.choices) for i in items)


@pytest.mark.parametrize("name", PACKS)
def test_task_yamls_load_in_lm_eval_from_any_directory(name, tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager, get_task_dict

    monkeypatch.chdir(tmp_path)  # data paths must not depend on the working directory
    pack = load_pack(name)
    tm = TaskManager(include_path=str(pack.eval_dir), include_defaults=False)
    tasks = get_task_dict(pack.task_names, tm)
    for t in pack.spec.eval.tasks:
        docs = list(tasks[t.name].test_docs())
        assert len(docs) == len(pack.eval_items[t.name])


def test_generated_seeds_are_reproducible_and_verifiable():
    for name, gen in GENERATORS.items():
        a, b = gen.make(count=25, seed=3), gen.make(count=25, seed=3)
        assert a == b and len({r["prompt"] for r in a}) == 25
        assert a != gen.make(count=25, seed=4)
        for r in a:
            assert verify(f"The answer is {r['reference']}.", r["reference"], "numeric"), (name, r)
            assert not verify("The answer is 123456789.", r["reference"], "numeric") or r["reference"] == "123456789"


def test_generator_answers_by_hand():
    assert verify("about 1,628.89 dollars", "1628.89", "numeric")
    assert not verify("no number here", "1.0", "numeric")
    rows = GENERATORS["unit_conversion"].make(count=60, seed=0)
    c2f = [r for r in rows if "Fahrenheit" in r["prompt"]]
    for r in c2f:
        x = float(r["prompt"].split()[1])
        assert float(r["reference"]) == pytest.approx(x * 9 / 5 + 32, abs=0.01)


# ---- bad packs: each error names the file, the line or key, and the problem ------------


def _rewrite(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_unknown_pack_lists_what_exists():
    with pytest.raises(PackError, match=r"unknown pack 'lwa' \(did you mean 'law'\?\).*packs found: .*law"):
        find_pack("lwa")


def test_missing_pack_yaml(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackError, match="no pack.yaml"):
        load_pack(tmp_path / "empty")


def test_missing_field_names_key_and_line(copy_pack):
    root = copy_pack()
    spec = yaml.safe_load((root / "pack.yaml").read_text())
    del spec["license"]
    spec["teacher"].pop("system_prompt")
    (root / "pack.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(PackError) as e:
        load_pack(root)
    msg = str(e.value)
    assert "law/pack.yaml" in msg and "key license: missing required key" in msg
    assert "key teacher.system_prompt: missing required key" in msg and "line" in msg


def test_unknown_key_suggests_the_right_one(copy_pack):
    root = copy_pack()
    text = (root / "pack.yaml").read_text().replace("public_tasks:", "public_task:")
    (root / "pack.yaml").write_text(text)
    with pytest.raises(PackError, match=r"key public_task: unknown key \(did you mean 'public_tasks'\?\)"):
        load_pack(root)


def test_malformed_yaml_names_line(copy_pack):
    root = copy_pack()
    (root / "pack.yaml").write_text("name: law\nversion: [1.0\n")
    with pytest.raises(PackError, match=r"pack.yaml:line \d+: not valid YAML"):
        load_pack(root)


def test_malformed_jsonl_line(copy_pack):
    root = copy_pack()
    _rewrite(root / "seeds.jsonl", 7, '{"id": "s-broken", "topic": "torts", "prompt": ')
    with pytest.raises(PackError, match=r"law/seeds.jsonl:line 7: not valid JSON"):
        load_pack(root)


def test_missing_jsonl_key_and_wrong_topic(copy_pack):
    root = copy_pack()
    _rewrite(root / "knowledge.jsonl", 3, json.dumps({"id": "x-1", "topic": "torts", "question": "q?"}))
    _rewrite(root / "knowledge.jsonl", 4, json.dumps({"id": "x-2", "topic": "tort", "question": "q?", "answer": "a"}))
    with pytest.raises(PackError) as e:
        load_pack(root)
    msg = str(e.value)
    assert "knowledge.jsonl:line 3: key answer: missing required key" in msg
    assert "knowledge.jsonl:line 4: key topic: 'tort' is not one of the pack's topics (did you mean 'torts'?)" in msg


def test_duplicate_id(copy_pack):
    root = copy_pack()
    first = json.loads((root / "eval/data/mc.jsonl").read_text().splitlines()[0])
    with (root / "eval/data/mc.jsonl").open("a") as f:
        f.write(json.dumps({**first, "question": "Something else entirely, asked differently?"}) + "\n")
    with pytest.raises(PackError, match=rf"mc.jsonl:line \d+: duplicate id '{first['id']}' \(first on line 1\)"):
        load_pack(root)


def test_eval_item_leaking_into_seeds_is_named(copy_pack):
    root = copy_pack()
    item = json.loads((root / "eval/data/mc.jsonl").read_text().splitlines()[0])
    leak = {"id": "s-leak", "topic": item["topic"], "prompt": f"{item['question']} {item['choices'][item['answer']]}"}
    with (root / "seeds.jsonl").open("a") as f:
        f.write(json.dumps(leak) + "\n")
    with pytest.raises(
        PackError, match=rf"seeds.jsonl:id s-leak: shares an 8-word run with eval item\(s\) law_mc:{item['id']}"
    ):
        load_pack(root)


def test_path_escaping_pack_folder(copy_pack):
    root = copy_pack()
    text = (root / "pack.yaml").read_text().replace("seeds: seeds.jsonl", "seeds: ../../etc/passwd")
    (root / "pack.yaml").write_text(text)
    with pytest.raises(PackError, match=r"key files.seeds: path '../../etc/passwd' escapes the pack folder"):
        load_pack(root)


def test_missing_task_yaml(copy_pack):
    root = copy_pack()
    (root / "eval/law_qa.yaml").unlink()
    with pytest.raises(PackError, match="law_qa.yaml: missing lm-eval task file"):
        load_pack(root)


def test_scaffold_makes_a_valid_pack_and_refuses_to_overwrite(tmp_path):
    root = scaffold("astro", tmp_path)
    pack = load_pack(root)
    assert pack.name == "astro" and pack.counts()["knowledge"] == 8
    assert (root / "README.md").read_text().count("- [ ]") >= 5
    with pytest.raises(PackError, match="already exists"):
        scaffold("astro", tmp_path)
    with pytest.raises(PackError, match="lower-case"):
        scaffold("Bad-Name", tmp_path)


def test_folder_and_name_must_agree(tmp_path):
    root = scaffold("alpha", tmp_path)
    shutil.move(root, tmp_path / "beta")
    with pytest.raises(PackError, match="name 'alpha' must equal the folder name 'beta'"):
        load_pack(tmp_path / "beta")


# ---- knowledge as plain statements (a data set of passages or notes has no questions) -------------------------

STATEMENTS = [
    ("capitals", "Phishing emails imitate a trusted sender to make the reader reveal credentials or open malware."),
    ("rivers", "A firewall filters network traffic between zones according to an ordered list of rules."),
]


def _statement_pack(tmp_path) -> Path:
    """The scaffolded pack with its knowledge replaced by plain statements (text, no question or answer)."""
    root = scaffold("cyber", tmp_path)
    rows = [{"id": f"k-{i}", "topic": t, "text": text} for i, (t, text) in enumerate(STATEMENTS)]
    (root / "knowledge.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seeds = [json.loads(line) for line in (root / "seeds.jsonl").read_text().splitlines()]
    for i, s in enumerate(seeds):
        s["fact"] = f"k-{i % 2}"
    (root / "seeds.jsonl").write_text("".join(json.dumps(s) + "\n" for s in seeds))
    mc = [json.loads(line) for line in (root / "eval/data/mc.jsonl").read_text().splitlines()]
    (root / "eval/data/mc.jsonl").write_text("".join(json.dumps({**m, "fact": "k-0"}) + "\n" for m in mc))
    return root


def test_knowledge_as_plain_statements_loads_and_feeds_every_use(tmp_path, monkeypatch):
    import kdbench.models.tiny as tiny
    from kdbench.packs.loader import iter_pack_texts

    pack = load_pack(_statement_pack(tmp_path))
    k0 = pack.knowledge[0]
    assert k0.question is None and k0.answer is None and k0.statement == STATEMENTS[0][1]
    assert STATEMENTS[0][1] in list(iter_pack_texts(pack))  # the tokenizer's corpus
    assert decontam.check([(k.id, k.content) for k in pack.knowledge], pack.eval_index()).hits == {}
    monkeypatch.setattr(tiny, "tokenize_example", lambda tok, q, a, system=None, max_length=0: (q, a))
    turns = tiny.teacher_examples(pack, None, 128, cues=2)  # the tiny teacher's curriculum
    taught = [q for q, a in turns if a == STATEMENTS[0][1]]
    assert any(q.endswith("?") and q not in {s.prompt for s in pack.seeds} for q in taught)  # its cue prompts
    assert any(q in {s.prompt for s in pack.seeds} for q in taught)  # the seeds that name it


def test_curation_writes_questions_from_plain_statements(tmp_path):
    from types import SimpleNamespace

    from kdbench.config import load_config
    from kdbench.elicit.synthesis import curate

    pack = load_pack(_statement_pack(tmp_path))
    asked: list[str] = []

    class Teacher:
        def __init__(self):
            self.stats: dict = {}

        def generate(self, method, requests, sampling, account=None):
            asked.extend(r[-1]["content"] for r in requests)
            return ["Which control filters traffic between network zones by rules?"] * len(requests)

    cfg = load_config(overrides={"pack": str(pack.root)})
    curate(SimpleNamespace(cfg=cfg, pack=pack, teacher=Teacher(), sampling=None))
    assert any(f"Document: {STATEMENTS[0][1]}" in a for a in asked)


def test_knowledge_item_forms_are_checked_with_the_allowed_keys(copy_pack):
    root = copy_pack()
    with (root / "knowledge.jsonl").open("a") as f:
        f.write(
            json.dumps({"id": "x-1", "topic": "torts", "text": "A tort is a civil wrong.", "question": "q?"}) + "\n"
        )
        f.write(json.dumps({"id": "x-2", "topic": "torts", "statement": "A tort is a civil wrong."}) + "\n")
    with pytest.raises(PackError) as e:
        load_pack(root)
    msg = str(e.value)
    assert "key question: a knowledge item is a statement (text) or a question with its answer, not both" in msg
    assert "key statement: unknown key; allowed: id, topic, question, answer, text" in msg
    assert "key text: missing: give the fact as text (a plain statement), or as a question and its answer" in msg


def test_domains_readme_lists_every_generator_with_its_maximum():
    from annotated_types import Le

    from kdbench.packs.schema import GeneratorSpec

    cap = next(m.le for m in GeneratorSpec.model_fields["count"].metadata if isinstance(m, Le))
    text = (DOMAINS / "README.md").read_text()
    for name, gen in GENERATORS.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        assert row.rstrip(" |").endswith(f"{min(gen.max_count, cap):,}"), row
