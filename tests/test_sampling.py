"""Samples come from the model's own distribution; training tokens are the chat template's own.

A model's generation_config (here top_k = 1 and a repetition penalty, which would
make every sample the argmax) must not shape on-policy samples, the hf backend's
samples or self-knowledge's; and the token sequence a student trains on must be
the one its chat template writes (one BOS or none, the turn-closing token right).
"""

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from kdbench.backends import HFBackend, Sampling
from kdbench.data import encode_text, messages_for, render_messages, tokenize_example
from kdbench.distill.onpolicy import as_batch, prompts_of, student_batch
from kdbench.models.sampling import nucleus, sample
from kdbench.training import StepContext

V = 6


@pytest.fixture(scope="module")
def bent_model():
    """A 6-token Llama whose generation_config would make sampling greedy if it leaked."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        pad_token_id=0,
        eos_token_id=5,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # a spread, uneven next-token distribution
    model.generation_config = GenerationConfig(
        do_sample=True, top_k=1, repetition_penalty=5.0, eos_token_id=5, pad_token_id=0
    )
    return model


def _first_token_probs(model, prompt):
    with torch.no_grad():
        return torch.softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1].float(), -1)


def _assert_follows(counts: torch.Tensor, probs: torch.Tensor, n: int):
    freq = counts.double() / n
    sd = (probs.double() * (1 - probs.double()) / n).sqrt()
    assert torch.all((freq - probs.double()).abs() <= 5 * sd + 1e-3), (freq, probs)
    assert (counts > 0).sum() >= 3  # not one token every time, as top_k = 1 would give


def test_sampler_follows_the_softmax_despite_generation_config(bent_model):
    n, prompt = 6000, [1, 2]
    probs = _first_token_probs(bent_model, prompt)
    assert probs.max() < 0.9  # the check below can tell sampling from argmax
    conts, stopped = sample(
        bent_model,
        [prompt] * n,
        max_new_tokens=1,
        eos=5,
        pad=0,
        temperature=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    first = torch.tensor([c[0] if c else 5 for c in conts])
    assert stopped == [t == 5 for t in first.tolist()]
    _assert_follows(torch.bincount(first, minlength=V), probs, n)


def test_on_policy_batches_follow_the_students_softmax(bent_model):
    n, prompt = 4000, [1, 3]
    probs = _first_token_probs(bent_model, prompt)
    tok = type("Tok", (), {"eos_token_id": 5, "pad_token_id": 0, "__len__": lambda self: V})()
    batch = {
        "input_ids": torch.tensor([prompt + [4]] * n),
        "attention_mask": torch.ones(n, 3, dtype=torch.long),
        "loss_mask": torch.tensor([[False, False, True]] * n),
    }
    ctx = StepContext(
        student=bent_model,
        teacher=None,
        tokenizer=tok,
        hp=None,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(1),
    )
    out = student_batch(ctx, batch, max_new_tokens=1)
    assert torch.equal(out["input_ids"][:, :2], torch.tensor([prompt] * n))
    _assert_follows(torch.bincount(out["input_ids"][:, 2], minlength=V), probs, n)


def test_hf_backend_samples_ignore_the_models_generation_config(micro):
    backend = HFBackend(micro.models.student)  # untrained: a flat distribution, many distinct samples
    backend.model.generation_config = GenerationConfig(
        do_sample=True, top_k=1, repetition_penalty=5.0, eos_token_id=backend.tokenizer.eos_token_id
    )
    outs = backend.generate(
        [messages_for("What is the capital of France?")] * 24, Sampling(max_new_tokens=4, temperature=1.0, seed=3)
    )
    assert len(set(outs)) > 12
    greedy = backend.generate([messages_for("What is the capital of France?")] * 3, Sampling(max_new_tokens=4))
    assert len(set(greedy)) == 1


def test_nucleus_keeps_the_smallest_top_set():
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    torch.testing.assert_close(nucleus(p, 0.7), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    torch.testing.assert_close(nucleus(p, 1.0), p)


def test_prompts_of_and_the_action_mask():
    batch = {
        "input_ids": torch.tensor([[7, 8, 9, 4, 0], [7, 4, 4, 4, 4]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
        "loss_mask": torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.bool),
    }
    assert prompts_of(batch) == [[7, 8], [7]]
    out = as_batch([[7, 8], [7]], [[3], [3, 3]], [True, False], eos=4, pad=0, device="cpu")
    assert out["input_ids"].tolist() == [[7, 8, 3, 4], [7, 3, 3, 4]]
    assert out["loss_mask"].tolist() == [[False, False, True, True], [False, True, True, True]]
    # row 1 was cut at max_new_tokens: its eos was appended, never sampled, so it is no action
    assert out["action_mask"].tolist() == [[False, False, True, True], [False, True, True, False]]


BOS_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture
def tiny_tok(micro):
    from kdbench.models.loading import load_tokenizer

    return load_tokenizer(micro.models.student)


def _template_ids(tok, prompt, response):
    msgs = [*messages_for(prompt), {"role": "assistant", "content": response}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def test_training_tokens_equal_the_template_without_bos(tiny_tok):
    ex = tokenize_example(tiny_tok, "What is the capital of France?", "Paris.")
    assert ex["input_ids"] == _template_ids(tiny_tok, "What is the capital of France?", "Paris.")
    assert ex["input_ids"][-1] == tiny_tok.eos_token_id and sum(ex["loss_mask"]) >= 2


def test_training_tokens_equal_the_template_that_writes_bos(tiny_tok):
    tok = tiny_tok
    tok.add_special_tokens({"bos_token": "<s>"})
    tok.chat_template = BOS_TEMPLATE
    ex = tokenize_example(tok, "What is the capital of France?", "Paris.")
    want = _template_ids(tok, "What is the capital of France?", "Paris.")
    assert want[0] == tok.bos_token_id and ex["input_ids"] == want  # one BOS: the template's
    assert ex["input_ids"].count(tok.bos_token_id) == 1
    # elicitation and scoring encode the prompt the same way
    assert (
        encode_text(tok, render_messages(tok, messages_for("What is the capital of France?")))
        == ex["input_ids"][: ex["loss_mask"].index(1)]
    )
    # truncation keeps the BOS and cuts the prompt from the left
    short = tokenize_example(tok, "What is the capital of France? " * 20, "Paris.", max_length=24)
    assert len(short["input_ids"]) == 24 and short["input_ids"][0] == tok.bos_token_id
