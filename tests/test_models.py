"""The embedded default: tokenizer, chat template, save/load through from_pretrained, caching."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from kdbench.data import messages_for, render_messages, tokenize_example
from kdbench.models.tiny import build_tiny_models, cue_prompts, train_tokenizer


def test_tokenizer_lowercases_and_marks_word_starts():
    tok = train_tokenizer(["consideration is the bargained for exchange"] * 50, vocab_size=300)
    a = tok("Consideration", add_special_tokens=False)["input_ids"]
    b = tok(" consideration", add_special_tokens=False)["input_ids"]
    assert a == b
    assert tok.decode(tok("the exchange", add_special_tokens=False)["input_ids"]) == "the exchange"


def test_models_load_through_the_hub_code_path(micro):
    m = micro.models
    for path in (m.teacher, m.student):
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        assert model.config.model_type == "llama" and tok.chat_template
        assert json.loads(open(f"{path}/kdbench.json").read())["fingerprint"]
    t = AutoModelForCausalLM.from_pretrained(m.teacher)
    s = AutoModelForCausalLM.from_pretrained(m.student)
    assert sum(p.numel() for p in s.parameters()) < sum(p.numel() for p in t.parameters())
    assert AutoTokenizer.from_pretrained(m.teacher).get_vocab() == AutoTokenizer.from_pretrained(m.student).get_vocab()


def test_build_is_cached(micro):
    again = build_tiny_models(micro.pack, micro.cfg.tiny, micro.cfg.home_path)
    assert again.cached and again.teacher == micro.models.teacher


def test_chat_template_and_loss_mask(micro):
    tok = AutoTokenizer.from_pretrained(micro.models.teacher)
    text = render_messages(tok, messages_for("What is X?", "Be brief."))
    assert text == "<|system|>Be brief.<|end|><|user|>Question: What is X?\nAnswer:<|end|><|assistant|>"
    assert render_messages(tok, messages_for("What is X?", "Be brief.", wrap=True)) == text
    ex = tokenize_example(tok, "What is X?", "X is a thing.", max_length=64)
    n_resp = sum(ex["loss_mask"])
    assert ex["input_ids"][-1] == tok.eos_token_id and ex["loss_mask"][-1] == 1
    assert tok.decode(ex["input_ids"][-n_resp:-1]) == "x is a thing."
    short = tokenize_example(tok, "What is X? " * 40, "X is a thing.", max_length=20)
    assert len(short["input_ids"]) == 20 and sum(short["loss_mask"]) == n_resp  # the prompt is cut, not the answer


def test_cue_prompts_are_seeded_subsets():
    import random

    a = cue_prompts("What is consideration?", "Consideration is the bargained-for exchange.", 3, random.Random(1))
    b = cue_prompts("What is consideration?", "Consideration is the bargained-for exchange.", 3, random.Random(1))
    assert a == b and len(a) == 3 and all(c.endswith("?") for c in a)


def _answer_loss(model, examples) -> float:
    """Mean cross-entropy of the answer tokens (loss_mask) over ``examples``."""
    import torch

    total, n = 0.0, 0
    with torch.no_grad():
        for e in examples:
            ids = torch.tensor([e["input_ids"]])
            logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            nll = -logp.gather(-1, ids[0, 1:, None])[:, 0]
            mask = torch.tensor(e["loss_mask"][1:], dtype=torch.bool)
            total, n = total + nll[mask].sum().item(), n + int(mask.sum())
    return total / n


@pytest.mark.slow
def test_the_student_is_pretrained_on_the_other_packs_and_lacks_the_target(tmp_path, copy_pack):
    """The embedded default's regime: a shared tokenizer, a student pretrained on the general packs (never the
    target), a card that tells the self-knowledge warm-up it is trained, a cache key over every pack used."""
    import random

    from kdbench.config import TinyConfig, load_config
    from kdbench.elicit.feedback import warmup_config
    from kdbench.models.loading import untrained
    from kdbench.models.tiny import _llama, general_examples, models_dir, teacher_examples
    from kdbench.packs import load_pack
    from tests.conftest import MICRO

    law, med, fin = (copy_pack(n) for n in ("law", "medicine", "finance"))
    target = load_pack(law)
    tiny = TinyConfig(
        **{**MICRO, "teacher_epochs": 0.2, "student_epochs": 1.0, "general_packs": [str(law), str(med), str(fin)]}
    )
    built = build_tiny_models(target, tiny, tmp_path / "home")
    card = json.loads(open(f"{built.student}/kdbench.json").read())
    assert card["role"] == "pretrained-student" and card["general_packs"] == ["medicine", "finance"]
    assert card["student_pretrain_examples"] > 1000 and not untrained(built.student)
    cfg = load_config(overrides={"pack": "law"})
    assert warmup_config(cfg, built.student) is None  # a pretrained student samples as it is

    tok = AutoTokenizer.from_pretrained(built.student)
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(built.teacher).get_vocab()
    rng = random.Random(0)
    general = rng.sample(general_examples([load_pack(med)], tok, tiny.max_positions, 1, 0), 40)
    domain = rng.sample(teacher_examples(target, tok, tiny.max_positions, cues=0), 40)
    pretrained = AutoModelForCausalLM.from_pretrained(built.student)
    random_init = _llama(tok, tiny.student, tiny.max_positions, tiny.seed + 1)
    gain_general = _answer_loss(random_init, general) - _answer_loss(pretrained, general)
    gain_domain = _answer_loss(random_init, domain) - _answer_loss(pretrained, domain)
    assert gain_general > gain_domain + 0.2, (gain_general, gain_domain)  # it learned medicine more than law

    before = models_dir(target, tiny, tmp_path / "home")
    fact = json.loads(open(med / "knowledge.jsonl").readline())
    with open(med / "knowledge.jsonl", "a") as f:  # a general pack's text changes: the models rebuild
        f.write(json.dumps({**fact, "id": "cardiology-extra"}) + "\n")
    assert models_dir(target, tiny, tmp_path / "home") != before
    no_pretraining = tiny.model_copy(update={"student_epochs": 0.0})
    assert models_dir(target, no_pretraining, tmp_path / "home") != before


def test_models_are_made_and_loaded_under_the_process_wide_lock(micro, monkeypatch):
    """Prefect runs tasks in threads, and transformers patches torch's init functions module-wide while it makes
    a model: every load (ours and lm-eval's) and every fresh model holds MODEL_LOCK, or a concurrent load can come
    out re-initialised (a finance teacher evaluated at 16.9 instead of 76.5 before this lock)."""
    import transformers

    import kdbench.models.tiny as tiny
    from kdbench.models.loading import MODEL_LOCK, load_model

    held = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *a, **k):
        held.append(MODEL_LOCK._is_owned())  # pyright: ignore[reportAttributeAccessIssue]
        return real(cls, *a, **k)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    load_model(micro.models.teacher)
    tok = AutoTokenizer.from_pretrained(micro.models.student)
    real_llama = transformers.LlamaForCausalLM.__init__

    def llama_spy(self, *a, **k):
        held.append(MODEL_LOCK._is_owned())  # pyright: ignore[reportAttributeAccessIssue]
        real_llama(self, *a, **k)

    monkeypatch.setattr(transformers.LlamaForCausalLM, "__init__", llama_spy)
    tiny._llama(tok, micro.cfg.tiny.student, 64, 0)
    assert held == [True, True]
