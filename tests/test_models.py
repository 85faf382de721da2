"""The embedded default: tokenizer, chat template, save/load through from_pretrained, caching."""

import json

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
