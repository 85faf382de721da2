"""One vocabulary, two widths: white-box algorithms between models whose embedding matrices are padded apart.

Models of one family share a tokenizer but pad their embedding matrices to different sizes (Qwen2.5:
151,936 and 152,064 rows for 151,665 tokens). Here the micro teacher gets 13 rows of padding, the
student none (and the other way round), and every white-box algorithm that runs the teacher trains.
"""

import pytest
import torch

from kdbench.dataset import build_dataset
from kdbench.distill.divergence import real_tokens
from kdbench.distill.losses import fkl
from kdbench.distill.run import distill
from kdbench.elicit import elicit

PAD_ROWS = 13


def _padded(src: str, dst) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    tok = AutoTokenizer.from_pretrained(src)
    model.resize_token_embeddings(len(tok) + PAD_ROWS)
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return str(dst)


@pytest.fixture(scope="module")
def setup(micro, tmp_path_factory):
    home = tmp_path_factory.mktemp("padded-home")
    res = elicit(micro.pack, micro.models.teacher, micro.cfg, home)
    return {
        "data": build_dataset(micro.pack, res.path, home),
        "home": home,
        "teacher": _padded(micro.models.teacher, home / "teacher-padded"),
        "student": _padded(micro.models.student, home / "student-padded"),
    }


def test_real_tokens_cuts_both_to_the_tokenizer():
    tok = ["t"] * 10  # len() is what counts
    s, t = torch.randn(2, 3, 10), torch.randn(2, 3, 16)
    s2, t2 = real_tokens(tok, s, t)
    assert s2 is s and t2.shape == (2, 3, 10) and torch.equal(t2, t[..., :10])
    (s3,) = real_tokens(tok, torch.randn(2, 3, 12))
    assert s3.shape[-1] == 10
    s4, t4 = real_tokens(["t"] * 20, torch.randn(2, 3, 12), t)  # a tokenizer longer than the models: the narrower
    assert s4.shape[-1] == t4.shape[-1] == 12
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="one vocabulary"):
        fkl(s, t, mask)  # the pure loss still refuses two widths: cutting is the caller's decision


@pytest.mark.parametrize("algo", ["fkl", "gkd", "minillm", "hidden"])
def test_a_padded_teacher_teaches_an_unpadded_student(micro, setup, algo):
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(setup["teacher"])
    assert teacher.config.vocab_size == micro.models.info["vocab"] + PAD_ROWS
    logged = []
    res = distill(
        algo,
        0,
        setup["teacher"],
        micro.models.student,
        setup["data"],
        micro.cfg,
        setup["home"],
        log_fn=lambda step, m: logged.append(m),
    )
    assert res.steps > 0 and all(torch.isfinite(torch.tensor(m["train.loss"])) for m in logged)


def test_an_unpadded_teacher_teaches_a_padded_student(micro, setup):
    res = distill("jsd", 0, micro.models.teacher, setup["student"], setup["data"], micro.cfg, setup["home"])
    assert res.steps > 0


def test_the_cut_loss_is_the_loss_over_the_real_tokens(micro, setup):
    """On one batch, fkl from the padded teacher equals fkl from the same teacher with its padding rows dropped."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdbench.data import collate, tokenize_example
    from kdbench.distill.divergence import DivergenceConfig, divergence_loss
    from kdbench.training import StepContext

    tok = AutoTokenizer.from_pretrained(micro.models.teacher)
    padded = AutoModelForCausalLM.from_pretrained(setup["teacher"]).eval()
    plain = AutoModelForCausalLM.from_pretrained(micro.models.teacher).eval()
    student = AutoModelForCausalLM.from_pretrained(micro.models.student)
    batch = collate([tokenize_example(tok, "What is a tort?", "A civil wrong.", max_length=64)], tok.pad_token_id)

    def loss(teacher):
        ctx = StepContext(student, teacher, tok, DivergenceConfig(), torch.device("cpu"))
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return divergence_loss("fkl", ctx, batch, logits)[0]

    # the padded teacher's real rows are the plain teacher's (resize keeps them), so the losses agree
    torch.testing.assert_close(loss(padded), loss(plain))
