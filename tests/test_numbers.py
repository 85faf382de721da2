"""Numbers a researcher can trust: stratified quick looks, forgetting metrics, gold reference answers."""

from types import SimpleNamespace

import pytest

from kdbench import names
from kdbench.evaluate import retention_tasks, stratified
from kdbench.metrics import retention_metrics
from kdbench.packs import load_pack


def _items(topics: dict[str, int]) -> list:
    out = []
    for t, n in topics.items():
        out += [SimpleNamespace(topic=t, id=f"{t}-{i}") for i in range(n)]
    return out


def test_stratified_limit_takes_every_topic_in_proportion():
    # topic-sorted data: 8 topics of 10 items; the first 20 in file order would see 2 topics
    items = _items({f"t{i}": 10 for i in range(8)})
    picked = stratified(items, 20, "law_mc:20")
    assert len(picked) == 20 and picked == sorted(picked)
    per_topic = {t: sum(1 for i in picked if items[i].topic == t) for t in {it.topic for it in items}}
    assert sorted(per_topic.values()) == [2, 2, 2, 2, 3, 3, 3, 3]  # 2.5 each: four round up, four down
    assert stratified(items, 20, "law_mc:20") == picked  # a fixed seed: every model sees the same items
    assert stratified(items, 20, "other:20") != picked
    assert stratified(items, 500, "x") == list(range(80))


def test_stratified_shares_by_hand():
    # 60 / 30 / 10 items, 10 to pick: exact shares 6, 3, 1
    items = _items({"a": 60, "b": 30, "c": 10})
    picked = stratified(items, 10, "s")
    assert [sum(1 for i in picked if items[i].topic == t) for t in "abc"] == [6, 3, 1]
    # 5 / 5 / 5, 4 to pick: shares 1.33 each, the largest remainders (ties by name) round up: a gets 2
    items = _items({"a": 5, "b": 5, "c": 5})
    picked = stratified(items, 4, "s")
    assert [sum(1 for i in picked if items[i].topic == t) for t in "abc"] == [2, 1, 1]


def test_retention_metrics_and_forgetting_by_hand():
    before = {"medicine_mc": {"acc": 0.40, "acc_stderr": 0.03, "n": 200.0}, "finance_mc": {"acc": 0.50, "n": 100.0}}
    after = {"medicine_mc": {"acc": 0.30, "acc_stderr": 0.03, "n": 200.0}, "finance_mc": {"acc": 0.55, "n": 100.0}}
    m = retention_metrics(after, before)
    assert m[names.retention("medicine_mc", "acc")] == 0.30
    assert m[names.retention("medicine_mc", "acc", "delta")] == pytest.approx(-0.10)
    assert m[names.retention("finance_mc", "acc", "delta")] == pytest.approx(0.05)
    assert m[names.RETENTION_MEAN_DELTA] == pytest.approx(-0.025)
    assert names.retention("medicine_mc", "acc_stderr") not in m
    assert names.RETENTION_MEAN_DELTA not in retention_metrics(before)  # a baseline: scores, no change


def test_retention_tasks_auto_are_the_other_packs_mc_tasks_for_the_tiny_student():
    from kdbench.config import load_config

    law = load_pack("law")
    tiny = load_config(overrides={"pack": "law"})
    assert [t for _, t in retention_tasks(law, tiny)] == ["finance_mc", "medicine_mc", "science_mc"]
    hub = load_config(overrides={"pack": "law", "models": {"students": ["HuggingFaceTB/SmolLM2-135M-Instruct"]}})
    assert retention_tasks(law, hub) == []
    chosen = load_config(overrides={"pack": "law", "eval": {"retention": ["medicine_mc", "hellaswag"]}})
    got = retention_tasks(law, chosen)
    assert [(p.name if p else None, t) for p, t in got] == [("medicine", "medicine_mc"), (None, "hellaswag")]
    from kdbench.errors import ConfigError

    with pytest.raises(ConfigError, match="is a task of pack 'law' itself"):
        retention_tasks(law, load_config(overrides={"pack": "law", "eval": {"retention": ["law_mc"]}}))


def test_gold_answers_come_from_the_seed_or_its_fact(copy_pack):
    import json

    root = copy_pack("law")
    seeds = [json.loads(line) for line in (root / "seeds.jsonl").read_text().splitlines() if line.strip()]
    seeds[0]["answer"] = "A reference answer written by a person."
    (root / "seeds.jsonl").write_text("".join(json.dumps(s) + "\n" for s in seeds))
    pack = load_pack(root)
    gold = {s.id: a for s, a in pack.gold_answers()}
    assert gold[seeds[0]["id"]] == "A reference answer written by a person."
    facts = {k.id: k.statement for k in pack.knowledge}
    assert gold[seeds[1]["id"]] == facts[seeds[1]["fact"]]
    assert len(gold) == sum(1 for s in seeds if s.get("answer") or s.get("fact"))


def test_gold_rows_sit_beside_the_dataset_and_train_the_gold_row(micro, tmp_path):
    from kdbench.dataset import build_dataset
    from kdbench.distill.run import distill, distill_key
    from kdbench.elicit import elicit

    res = elicit(micro.pack, micro.models.teacher, micro.cfg, tmp_path)
    info = build_dataset(micro.pack, res.path, tmp_path)
    gold = info.manifest["gold"]
    assert gold["rows"] == len(micro.pack.gold_answers()) - gold["contaminated"] and gold["rows"] > 0
    # the teacher's data hash does not see gold rows: other algorithms' results do not depend on them
    key_sft = distill_key("sft", 0, micro.models.teacher, micro.models.student, info.manifest, micro.cfg)
    changed = {**info.manifest, "gold": {**gold, "hash": "other"}}
    assert distill_key("sft", 0, micro.models.teacher, micro.models.student, changed, micro.cfg) == key_sft
    assert distill_key("gold", 0, micro.models.teacher, micro.models.student, changed, micro.cfg) != distill_key(
        "gold", 0, micro.models.teacher, micro.models.student, info.manifest, micro.cfg
    )
    # gold never sees the teacher: another teacher, the same gold student
    assert distill_key("gold", 0, "/another/teacher", micro.models.student, info.manifest, micro.cfg) == distill_key(
        "gold", 0, micro.models.teacher, micro.models.student, info.manifest, micro.cfg
    )
    out = distill("gold", 0, micro.models.teacher, micro.models.student, info, micro.cfg, tmp_path)
    assert out.steps > 0 and out.train_tokens > 0
