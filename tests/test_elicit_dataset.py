"""Labeling with the HF backend, the generation cache, and the dataset filters."""

import json
import shutil

import pytest

from kdbench.backends import HFBackend, Sampling
from kdbench.dataset import build_dataset, load_examples
from kdbench.elicit import check_methods, elicit
from kdbench.elicit.cache import GenerationCache
from kdbench.elicit.teacher import CachedModel
from kdbench.errors import ConfigError


def test_hf_backend_batches_match_one_by_one(micro):
    backend = HFBackend(micro.models.teacher, batch_size=4)
    reqs = [
        [{"role": "user", "content": p}]
        for p in [
            "What is the capital of France?",
            "Name a river.",
            "Which river flows through Baghdad?",
            "Hi",
            "Which city is the capital of Japan? Tell me.",
        ]
    ]
    batched = backend.generate(reqs, Sampling(max_new_tokens=8))
    single = [HFBackend(micro.models.teacher, batch_size=1).generate([r], Sampling(max_new_tokens=8))[0] for r in reqs]
    assert batched == single  # left padding and length sorting do not change greedy outputs
    assert backend.generated_tokens > 0


def test_labeling_rows_and_cache_reuse(micro, tmp_path):
    cfg = micro.cfg.model_copy(update={"home": str(tmp_path)})
    res = elicit(micro.pack, micro.models.teacher, cfg, tmp_path)
    rows = [json.loads(line) for line in res.path.read_text().splitlines()]
    assert len(rows) == len(micro.pack.seeds) == res.stats["methods"]["labeling"]["requests"]
    assert {r["method"] for r in rows} == {"labeling"} and all(r["prompt"] for r in rows)
    again = elicit(micro.pack, micro.models.teacher, cfg, tmp_path)
    assert again.cached and again.path == res.path


def test_teacher_cache_resumes_without_repeating(micro, tmp_path):
    cfg = micro.cfg
    t = CachedModel(micro.models.teacher, cfg, tmp_path, backend_name="hf")
    reqs = [[{"role": "user", "content": f"question {i}?"}] for i in range(6)]
    first = t.generate("labeling", reqs[:4], Sampling(max_new_tokens=4))
    t2 = CachedModel(micro.models.teacher, cfg, tmp_path, backend_name="hf")  # a new process, same cache file
    calls = []
    real = t2.backend.generate
    t2.backend.generate = lambda r, s, desc="": calls.append(len(r)) or real(r, s)
    both = t2.generate("labeling", reqs, Sampling(max_new_tokens=4))
    assert calls == [2] and both[:4] == first


def test_corrupt_cache_line_is_skipped(tmp_path, capsys):
    path = tmp_path / "c.jsonl"
    c = GenerationCache(path)
    c.put_many([("a", "x"), ("b", "y")])
    with path.open("a") as f:
        f.write('{"key": "c", "outp')  # a write cut short by a crash
    c2 = GenerationCache(path)
    assert len(c2) == 2 and c2.get("b") == "y" and c2.skipped_lines == 1
    assert "skipped 1 unreadable line" in capsys.readouterr().out
    assert len(path.read_text().splitlines()) == 2  # rewritten clean


def test_method_checks(micro):
    with pytest.raises(ConfigError, match="unknown method 'labelling' \\(did you mean 'labeling'\\?\\)"):
        check_methods(["labelling"], micro.pack)


def test_dataset_filters_and_decontaminates(micro, tmp_path):
    mc = micro.pack.eval_items["geo_mc"][0]
    rows = [
        {"id": "r1", "method": "labeling", "topic": "capitals", "prompt": "p1", "response": "Paris."},
        {"id": "r2", "method": "labeling", "topic": "capitals", "prompt": "p1", "response": "Paris."},  # duplicate
        {"id": "r3", "method": "labeling", "topic": "capitals", "prompt": "p3", "response": ""},  # empty
        {
            "id": "r4",
            "method": "labeling",
            "topic": "rivers",
            "prompt": "How much is 2+2?",
            "response": "5",
            "reference": "4",
            "check": "numeric",
        },  # checkably wrong
        {
            "id": "r5",
            "method": "labeling",
            "topic": "rivers",
            "prompt": "Tell me",
            "response": f"{mc.question} {mc.choices[mc.answer]}",
        },  # an eval item, near verbatim
        {
            "id": "r6",
            "method": "labeling",
            "topic": "rivers",
            "prompt": "How much is 2+2?",
            "response": "It is 4.",
            "reference": "4",
            "check": "numeric",
        },
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = build_dataset(micro.pack, path, tmp_path)
    m = info.manifest
    assert m["dropped"] == {"empty": 1, "duplicate": 1, "wrong_answer": 1, "contaminated": 1}
    assert m["rows"] == 2 and m["decontam_rate"] == pytest.approx(1 / 3)
    assert [r["id"] for r in load_examples(info)] == ["r1", "r6"]
    assert (info.path / "data").is_dir()  # a Hugging Face dataset saved with save_to_disk


def test_every_method_produces_rows_with_stats(micro, tmp_path):
    methods = ["labeling", "expansion", "curation", "feedback", "self_knowledge"]
    cfg = micro.cfg.model_copy(deep=True)
    cfg.elicit.expansion_per_topic = 3
    cfg.elicit.curation_per_topic = 2
    cfg.elicit.curation_documents_per_topic = 1
    cfg.elicit.self_knowledge_warmup_epochs = 8.0  # the micro student cannot answer before it
    res = elicit(micro.pack, micro.models.teacher, cfg, tmp_path, student_ref=micro.models.student, methods=methods)
    rows = [json.loads(line) for line in res.path.read_text().splitlines()]
    by = {m: [r for r in rows if r["method"] == m] for m in methods}
    st = res.stats["methods"]
    assert len(by["labeling"]) == len(micro.pack.seeds)
    # other methods reuse labeling's answers through its cache, and count them under their own names
    assert st["labeling"]["requests"] == len(micro.pack.seeds) and st["feedback-teacher"]["cached"] > 0
    for m in ("expansion", "curation"):
        assert st[m]["drafts"] == 6  # expansion: 3 per topic; curation: 2 from the topic + 1 from a document
        assert st[m]["kept"] + st[m]["empty"] + st[m]["near_duplicate"] + st[m]["leaked"] == st[m]["drafts"]
        assert len(by[m]) == st[m]["kept"] and all(r["response"] for r in by[m])
    assert st["curation"]["from_documents"] == 2
    shown = res.stats["examples"]  # what each method asked, as sent, for the elicitation run in MLflow
    assert set(shown) == {
        "labeling",
        "expansion",
        "expansion-label",
        "curation",
        "curation-label",
        "feedback-teacher",
        "self_knowledge-teacher",
    }
    first = shown["labeling"][0]
    assert first["messages"][0]["role"] == "system" and first["output"] == by["labeling"][0]["response"]
    assert shown["expansion"][0]["sampling"]["temperature"] == cfg.elicit.expansion_temperature
    pairs = [r for r in by["feedback"] if "chosen" in r]
    assert st["feedback"]["pairs"] == len(pairs) > 0 and st["feedback"]["judge"] == "likelihood"
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    assert st["self_knowledge"]["samples"] == 2 * len(micro.pack.seeds)
    assert len(by["self_knowledge"]) == st["self_knowledge"]["kept"]
    # the student samples after its warm-up on the teacher's labels, and some samples pass the judge
    assert "self_knowledge-warmup" in st["self_knowledge"]["sampler"]
    assert st["self_knowledge"]["kept"] > 0, st["self_knowledge"]
    sk = st["self_knowledge"]  # a seed's identical samples are one row
    assert sk["passed"] == sk["kept"] + sk["repeated_samples"] and sk["warmup_epochs"] == 8
    assert len({(r["prompt"], r["response"]) for r in by["self_knowledge"]}) == len(by["self_knowledge"])
    assert 0 <= sk["kept_same_as_teacher"] <= sk["kept"]


def test_self_knowledge_warms_up_only_a_student_that_starts_untrained(micro, tmp_path):
    from kdbench.elicit.feedback import warmup_config

    cfg = micro.cfg.model_copy(deep=True)
    assert cfg.elicit.self_knowledge_warmup_epochs == "auto"
    tc = warmup_config(cfg, micro.models.student)  # the embedded tiny student, as built: random weights
    assert tc is not None and tc.epochs == cfg.distill.train.epochs and not tc.lora
    assert warmup_config(cfg, micro.models.teacher) is None  # a trained model samples as it is
    trained = tmp_path / "trained-student"
    shutil.copytree(micro.models.student, trained)
    (trained / "kdbench.json").unlink()  # what the trainer saves: no card
    assert warmup_config(cfg, str(trained)) is None
    cfg.elicit.self_knowledge_warmup_epochs = 0.0
    assert warmup_config(cfg, micro.models.student) is None
    cfg.elicit.self_knowledge_warmup_epochs = 3.0
    assert warmup_config(cfg, str(trained)).epochs == 3


def test_feature_topk_cache_is_compact_and_aligned(micro, tmp_path):
    from kdbench.dataset import add_topk
    from kdbench.topk import TopKCache

    res = elicit(micro.pack, micro.models.teacher, micro.cfg, tmp_path)
    info = add_topk(build_dataset(micro.pack, res.path, tmp_path), micro.models.teacher, micro.cfg)
    t = info.manifest["topk"]
    assert t["k"] == 64 and t["bytes_per_token"] == 256 and t["id_dtype"] == "uint16"
    cache = TopKCache(t["path"])
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdbench.data import tokenize_example

    tok = AutoTokenizer.from_pretrained(micro.models.teacher)
    model = AutoModelForCausalLM.from_pretrained(micro.models.teacher)
    row = load_examples(info)[0]
    ex = cache.attach(row["id"], tokenize_example(tok, row["prompt"], row["response"], max_length=192))
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ex["input_ids"]])).logits[0], -1)
    pos = [i for i in range(len(ex["input_ids"]) - 1) if ex["loss_mask"][i + 1]]
    top = lp[pos].topk(64, -1)
    assert (torch.as_tensor(ex["teacher_topk_ids"][pos]) == top.indices).float().mean() > 0.95
    torch.testing.assert_close(torch.as_tensor(ex["teacher_topk_logprobs"][pos]), top.values, atol=2e-2, rtol=1e-2)


def test_teacher_cost_of_cached_generations(micro, tmp_path):
    """The data's teacher cost does not drop to zero when the generation cache served it."""
    first = elicit(micro.pack, micro.models.teacher, micro.cfg, tmp_path, methods=["labeling"])
    assert first.stats["teacher_generated_tokens"] > 0
    assert first.stats["teacher_tokens"] > 0
    cfg = micro.cfg.model_copy(deep=True)
    cfg.elicit.expansion_per_topic += 1  # another elicitation key; the same labeling requests
    again = elicit(micro.pack, micro.models.teacher, cfg, tmp_path, methods=["labeling"])
    assert not again.cached and again.stats["teacher_generated_tokens"] == 0
    assert again.stats["teacher_tokens"] == first.stats["teacher_tokens"]
    # the teacher's time is known for the run that generated; unknown (None, never a made-up 0) for the other
    assert first.stats["teacher_seconds"] > 0 and first.stats["teacher_outputs_reused"] == 0
    assert again.stats["teacher_seconds"] is None
    assert again.stats["teacher_outputs_reused"] == len(micro.pack.seeds)
    # feedback asks for the teacher's answers again (served by labeling's cache); they are charged once
    both = elicit(
        micro.pack,
        micro.models.teacher,
        cfg,
        tmp_path,
        student_ref=micro.models.student,
        methods=["labeling", "feedback"],
    )
    assert both.stats["methods"]["feedback-teacher"]["requests"] == len(micro.pack.seeds)
    assert both.stats["teacher_tokens"] == first.stats["teacher_tokens"]  # a likelihood judge writes no text
