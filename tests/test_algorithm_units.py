"""Unit tests for small algorithm pieces with hand-computed expectations.

* DPO (kdbench.distill.dpo): ``sequence_logprob`` and ``dpo_step`` on a bigram
  "model" whose next-token probabilities are a fixed table, so every sequence
  log-probability is a product of table entries written out below.
* ``kdbench.distill.hidden.layer_map``: student -> teacher layer pairs.
* evals/hooks.py: answer normalisation, exact match / ROUGE-L scoring, and the
  JSONL loader lm-eval calls.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from evals.hooks import make_loader, normalize, process_generation, rouge_l
from kdbench.distill.dpo import DPOConfig, dpo_step, sequence_logprob
from kdbench.distill.hidden import layer_map
from kdbench.training import StepContext

# ---- DPO -----------------------------------------------------------------------------

# Row i: next-token distribution after token i (vocabulary of 4).
PROBS = [
    [0.1, 0.2, 0.3, 0.4],  # after 0
    [0.25, 0.25, 0.25, 0.25],  # after 1
    [0.5, 0.125, 0.125, 0.25],  # after 2
    [0.4, 0.3, 0.2, 0.1],  # after 3
]


class BigramTable(torch.nn.Module):
    """logits[b, t] = log PROBS[input_ids[b, t]]: the distribution of token t+1 given token t."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(PROBS).log())

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=self.table[input_ids])


def _t(rows, dtype=torch.long):
    return torch.tensor(rows, dtype=dtype)


def test_sequence_logprob_sums_loss_masked_next_tokens():
    model = BigramTable()
    input_ids = _t([[0, 2, 1, 3], [3, 0, 3, 1]])  # row 1 ends in a pad token
    attention = _t([[1, 1, 1, 1], [1, 1, 1, 0]])
    loss_mask = _t(
        [
            [0, 0, 1, 1],  # prompt 0 2, answer 1 3
            [1, 1, 1, 0],
        ],
        torch.bool,
    )  # loss_mask[:, 0] has nothing to predict it: ignored
    with torch.no_grad():
        got = sequence_logprob(model, input_ids, attention, loss_mask)
    # row 0: P(1 | 2) * P(3 | 1) = 0.125 * 0.25 ; row 1: P(0 | 3) * P(3 | 0) = 0.4 * 0.4 (pad excluded)
    torch.testing.assert_close(got, torch.tensor([math.log(0.125 * 0.25), math.log(0.4 * 0.4)]))

    # an empty loss mask gives 0; unmasking the pad adds log P(1 | 3) = log 0.3
    none = sequence_logprob(model, input_ids, attention, torch.zeros_like(loss_mask)).detach()
    torch.testing.assert_close(none, torch.zeros(2))
    loss_mask[1, 3] = True
    got = sequence_logprob(model, input_ids, attention, loss_mask).detach()
    assert float(got[1]) == pytest.approx(math.log(0.4 * 0.4 * 0.3), rel=1e-6)


def _dpo_batch():
    # chosen:   row 0 log pc = log(0.125 * 0.25) = log(1/32);  row 1 log pc = log(0.4 * 0.4) = log 0.16
    # rejected: row 0 log pr = log(P(0|2) P(0|0)) = log(0.5 * 0.1) = log 0.05
    #           row 1 log pr = log(0.25^3) = log(1/64)
    # references: row 0 gives pc - ref_c = log 2, pr - ref_r = log 0.5 -> difference log 4
    #             row 1 gives both differences 0
    return {
        "input_ids": _t([[0, 2, 1, 3], [3, 0, 3, 1]]),
        "attention_mask": _t([[1, 1, 1, 1], [1, 1, 1, 0]]),
        "loss_mask": _t([[0, 0, 1, 1], [0, 1, 1, 0]], torch.bool),
        "rejected_input_ids": _t([[0, 2, 0, 0], [1, 1, 1, 1]]),
        "rejected_attention_mask": _t([[1, 1, 1, 1], [1, 1, 1, 1]]),
        "rejected_loss_mask": _t([[0, 0, 1, 1], [0, 1, 1, 1]], torch.bool),
        "ref_chosen": torch.tensor([math.log(1 / 64), math.log(0.16)]),
        "ref_rejected": torch.tensor([math.log(0.1), math.log(1 / 64)]),
    }


def _ctx(**hp):
    return StepContext(
        student=BigramTable(), teacher=None, tokenizer=None, hp=DPOConfig(**hp), device=torch.device("cpu")
    )


def test_dpo_loss_matches_hand_computation():
    # beta = 0.5: margins are 0.5 * log 4 = log 2 (row 0) and 0 (row 1).
    # -log sigmoid(log 2) = -log(2/3) = log 1.5 ; -log sigmoid(0) = log 2.
    loss, logs = dpo_step(_ctx(beta=0.5), _dpo_batch())
    assert float(loss.detach()) == pytest.approx((math.log(1.5) + math.log(2)) / 2, rel=1e-6)
    assert logs["reward_margin"] == pytest.approx(math.log(2) / 2 / 0.5, rel=1e-6)  # mean margin / beta
    assert logs["reward_accuracy"] == 0.5  # only row 0 prefers the chosen answer
    assert "chosen_nll" not in logs

    loss.backward()  # the loss is differentiable w.r.t. the student's parameters


def test_dpo_conservative_label_smoothing():
    # -(1 - ls) log sigmoid(m) - ls log sigmoid(-m), ls = 0.1:
    # row 0 (m = log 2): 0.9 * log 1.5 + 0.1 * log 3   (sigmoid(-log 2) = 1/3)
    # row 1 (m = 0):     0.9 * log 2 + 0.1 * log 2 = log 2
    loss, _ = dpo_step(_ctx(beta=0.5, label_smoothing=0.1), _dpo_batch())
    expected = (0.9 * math.log(1.5) + 0.1 * math.log(3) + math.log(2)) / 2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)


def test_dpo_sft_weight_adds_chosen_nll_per_token():
    # NLL of the chosen answers per loss-masked target token: 2 + 2 tokens.
    nll = -(math.log(1 / 32) + math.log(0.16)) / 4
    loss, logs = dpo_step(_ctx(beta=0.5, sft_weight=0.5), _dpo_batch())
    assert logs["chosen_nll"] == pytest.approx(nll, rel=1e-6)
    assert float(loss.detach()) == pytest.approx((math.log(1.5) + math.log(2)) / 2 + 0.5 * nll, rel=1e-6)


# ---- layer_map ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_student", "n_teacher", "expected"),
    [
        (2, 4, [(1, 2), (2, 4)]),
        (4, 4, [(1, 1), (2, 2), (3, 3), (4, 4)]),
        (3, 8, [(1, 3), (2, 5), (3, 8)]),  # 8/3 = 2.67 -> 3, 16/3 = 5.33 -> 5
        (1, 6, [(1, 6)]),
        # deeper student than teacher: 0.5, 1, 1.5, 2, 2.5, 3 with halves rounded up: two student layers per
        # teacher layer (0.5 -> 1)
        (6, 3, [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3)]),
    ],
)
def test_layer_map(n_student, n_teacher, expected):
    pairs = layer_map(n_student, n_teacher)
    assert pairs == expected
    assert [s for s, _ in pairs] == list(range(1, n_student + 1))
    assert all(1 <= t <= n_teacher for _, t in pairs)  # index 0 (embeddings) is never used
    assert pairs[-1] == (n_student, n_teacher)


# ---- evals/hooks.py -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Treaty of Rome", "treaty of rome"),
        ("  an  APPLE,   a pear! ", "apple pear"),
        ("Rome.", "rome"),
        ("theatre and anthem", "theatre and anthem"),  # articles only as whole words
        ("", ""),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_rouge_l_hand_computed():
    # 3-letter words: the Porter stemmer leaves them alone. pred has 6 tokens, ref 5;
    # LCS = "the cat on mat" = 4 -> P = 4/6, R = 4/5, F1 = 2PR / (P + R) = 8/11.
    assert rouge_l("the cat sat on the mat", "the cat on a mat") == pytest.approx(8 / 11, rel=1e-9)
    assert rouge_l("red dog", "red dog") == pytest.approx(1.0)
    assert rouge_l("red dog", "big cat") == 0.0


def test_process_generation_exact_match_and_rouge():
    doc = {"answer": "The Treaty of Rome", "aliases": ["Rome treaty"]}
    # only the first line counts; normalisation makes "treaty of rome." match the answer
    out = process_generation(doc, ["  treaty of Rome.\nmore text that would spoil the match"])
    assert out["exact_match"] == 1.0
    # ROUGE-L of "treaty of Rome." vs the answer: tokens [treaty, of, rome] vs [the, treaty, of, rome]:
    # P = 1, R = 3/4, F1 = 6/7 (the alias scores lower: LCS "treaty" or "rome" = 1)
    assert out["rougeL"] == pytest.approx(6 / 7, rel=1e-9)

    # an alias can give the exact match; the best ROUGE-L over refs is kept (alias: 1.0)
    out = process_generation(doc, ["Rome Treaty"])
    assert out == {"exact_match": 1.0, "rougeL": pytest.approx(1.0)}

    out = process_generation({"answer": "red dog", "aliases": None}, ["red cat"])
    assert out["exact_match"] == 0.0
    assert out["rougeL"] == pytest.approx(0.5)  # LCS 1, P = R = 1/2

    out = process_generation({"answer": "red dog"}, [])  # no generation at all
    assert out == {"exact_match": 0.0, "rougeL": 0.0}


def test_make_loader_reads_jsonl_with_defaults(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [
        {"question": "Capital of Italy?", "answer": "Rome", "aliases": ["Roma"], "fact": "f1"},
        {"question": "Capital of France?", "answer": "Paris"},
    ]
    (data / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")

    ds = make_loader(tmp_path)("data/qa.jsonl")
    assert list(ds.keys()) == ["test"]
    test = ds["test"]
    assert len(test) == 2  # the blank line is skipped
    assert test[0] == {"question": "Capital of Italy?", "answer": "Rome", "aliases": ["Roma"], "fact": "f1"}
    assert test[1] == {"question": "Capital of France?", "answer": "Paris", "aliases": [], "fact": None}


def test_make_loader_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        make_loader(tmp_path)("nope.jsonl")
    assert str((tmp_path / "nope.jsonl").resolve()) in str(err.value)
