"""uld (Universal Logit Distillation): the loss against the paper's definition, its properties, and a
cross-tokenizer distillation that runs through kdbench.distill.run.distill."""

import pytest
import torch

from kdbench.distill.uld import align, uld_distance, uld_loss


def reference(student: torch.Tensor, teacher: torch.Tensor, tau_s: float = 1.0, tau_t: float = 1.0) -> torch.Tensor:
    """The paper's definition in float64: per row, both softmaxes sorted in decreasing order, the shorter
    padded with zeros, the sum of absolute differences; the mean over rows. [N,Vs], [N,Vt] -> scalar."""
    q = torch.softmax(student.double() / tau_s, dim=-1).sort(dim=-1, descending=True).values
    p = torch.softmax(teacher.double() / tau_t, dim=-1).sort(dim=-1, descending=True).values
    V = max(q.shape[-1], p.shape[-1])
    q = torch.nn.functional.pad(q, (0, V - q.shape[-1]))
    p = torch.nn.functional.pad(p, (0, V - p.shape[-1]))
    return (q - p).abs().sum(-1).mean()


def _logits(*shape, seed: int, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize(("vs", "vt"), [(50, 50), (50, 80), (80, 50), (7, 300)])
@pytest.mark.parametrize(("tau_s", "tau_t"), [(1.0, 1.0), (2.0, 0.5)])
def test_value_and_gradient_match_the_definition(vs, vt, tau_s, tau_t):
    s, t = _logits(9, vs, seed=vs), _logits(9, vt, seed=vt + 1)
    s32 = s.clone().requires_grad_(True)
    got = uld_distance(s32, t, student_temperature=tau_s, teacher_temperature=tau_t, chunk_size=4)
    got.backward()
    s64 = s.double().requires_grad_(True)
    want = reference(s64, t, tau_s, tau_t)
    want.backward()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert s64.grad is not None and s32.grad is not None
    torch.testing.assert_close(s32.grad.double(), s64.grad, rtol=1e-4, atol=1e-6)


def test_zero_for_the_same_distribution_up_to_a_permutation_of_the_vocabulary():
    s = _logits(6, 40, seed=1)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(2))
    assert float(uld_distance(s, s[:, perm])) < 1e-6
    # the same distribution over a larger vocabulary whose extra tokens have probability 0
    wider = torch.cat([s[:, perm], torch.full((6, 25), float("-inf"))], dim=-1)
    assert float(uld_distance(s, wider)) < 1e-6 and float(uld_distance(wider, s)) < 1e-6


def test_invariant_to_permuting_either_vocabulary_and_never_negative():
    g = torch.Generator().manual_seed(3)
    for trial in range(20):
        s, t = _logits(5, 30, seed=10 + trial), _logits(5, 45, seed=50 + trial)
        base = uld_distance(s, t)
        assert float(base) >= 0
        ps, pt = torch.randperm(30, generator=g), torch.randperm(45, generator=g)
        torch.testing.assert_close(uld_distance(s[:, ps], t), base, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(uld_distance(s, t[:, pt]), base, rtol=1e-5, atol=1e-7)
        assert float(base) <= 2.0 + 1e-6  # a sum of |q - p| over two distributions is at most 2


def test_chunking_changes_nothing():
    s, t = _logits(11, 64, seed=4), _logits(11, 33, seed=5)
    grads = []
    for chunk in (1, 3, 11, 1000):
        x = s.clone().requires_grad_(True)
        uld_distance(x, t, chunk_size=chunk).backward()
        grads.append(x.grad)
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0])


def test_alignment_pairs_the_kth_response_tokens_up_to_the_shorter():
    sm = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    tm = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    s_rows, t_rows = align(sm, tm)
    assert s_rows.tolist() == [1, 2, 7, 8] and t_rows.tolist() == [0, 1, 4, 5]


def test_batched_loss_is_the_definition_on_aligned_rows_and_only_they_get_a_gradient():
    B, Ts, Tt, Vs, Vt = 2, 6, 4, 20, 31
    s, t = _logits(B, Ts, Vs, seed=6), _logits(B, Tt, Vt, seed=7)
    sm = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    tm = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    x = s.clone().requires_grad_(True)
    got = uld_loss(x, t, sm, tm, chunk_size=2)
    got.backward()
    pairs_s = [(0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
    pairs_t = [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    want = reference(torch.stack([s[b, i] for b, i in pairs_s]), torch.stack([t[b, i] for b, i in pairs_t]))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert x.grad is not None
    touched = {(b, i) for b in range(B) for i in range(Ts) if x.grad[b, i].abs().sum() > 0}
    assert touched <= set(pairs_s) and len(touched) >= 4
    empty = uld_loss(x, t, torch.zeros_like(sm), tm)
    assert float(empty.detach()) == 0.0 and empty.requires_grad


# ---- end to end: a micro teacher and a student with its own tokenizer ----------------------------------


@pytest.fixture(scope="module")
def cross(micro, tmp_path_factory):
    """The micro teacher's dataset, and an untrained student with a separately trained, smaller tokenizer."""
    from kdbench.data import QUESTION_TEMPLATE
    from kdbench.dataset import build_dataset
    from kdbench.elicit import elicit
    from kdbench.models.tiny import _llama, train_tokenizer
    from kdbench.packs.loader import iter_pack_texts

    home = tmp_path_factory.mktemp("uld-home")
    res = elicit(micro.pack, micro.models.teacher, micro.cfg, home)
    data = build_dataset(micro.pack, res.path, home)
    texts = list(iter_pack_texts(micro.pack)) + [
        QUESTION_TEMPLATE.format(prompt=k.question) for k in micro.pack.knowledge
    ]
    tok = train_tokenizer(texts, vocab_size=200)
    student = _llama(tok, micro.cfg.tiny.student, micro.cfg.tiny.max_positions, seed=99)
    path = home / "other-tokenizer-student"
    student.save_pretrained(path)
    tok.save_pretrained(path)
    return {"home": home, "data": data, "student": str(path)}


def _objective(model_ref: str, teacher_ref: str, data, cfg) -> tuple[float, float]:
    """The uld objective (CE + lambda * W) and its W term over the first 32 rows, as uld_step computes them."""
    from kdbench.data import collate, pad_id, tokenize_example
    from kdbench.dataset import load_examples
    from kdbench.distill.uld import ULDConfig, add_teacher_tokens, uld_step
    from kdbench.models.loading import load_model
    from kdbench.training import StepContext

    student, tok = load_model(model_ref)
    teacher, t_tok = load_model(teacher_ref)
    rows = [r for r in load_examples(data) if r.get("response")][:32]
    n = cfg.distill.train.max_length
    examples = add_teacher_tokens(
        [tokenize_example(tok, r["prompt"], r["response"], max_length=n) for r in rows], rows, t_tok, n
    )
    batch = collate(examples, pad_id(tok))
    ctx = StepContext(student.eval(), teacher.eval(), tok, ULDConfig(), torch.device("cpu"))
    with torch.no_grad():
        loss, logs = uld_step(ctx, batch)
    return float(loss), logs["uld"]


def test_uld_distills_across_tokenizers_and_lowers_its_loss(micro, cross):
    from transformers import AutoTokenizer

    from kdbench.distill.run import distill

    t_tok, s_tok = AutoTokenizer.from_pretrained(micro.models.teacher), AutoTokenizer.from_pretrained(cross["student"])
    assert t_tok.get_vocab() != s_tok.get_vocab() and len(t_tok) != len(s_tok)
    cfg = micro.cfg.model_copy(deep=True)
    cfg.distill.train.epochs = 6
    logged = []
    res = distill(
        "uld",
        0,
        micro.models.teacher,
        cross["student"],
        cross["data"],
        cfg,
        cross["home"],
        log_fn=lambda step, m: logged.append(m),
    )
    assert res.steps > 0 and {"train.uld", "train.ce"} <= set(logged[0])
    before = _objective(cross["student"], micro.models.teacher, cross["data"], cfg)
    after = _objective(res.model_dir, micro.models.teacher, cross["data"], cfg)
    print(f"uld objective, W: before {before}, after {after}")
    assert after[0] < 0.8 * before[0] and after[1] < before[1], (before, after)


def test_white_box_algorithms_refuse_the_pair_and_name_uld(micro, cross):
    from kdbench.distill.run import distill
    from kdbench.errors import UserError

    with pytest.raises(UserError, match=r"cross-tokenizer algorithm: uld, or a black-box algorithm: sft"):
        distill("fkl", 0, micro.models.teacher, cross["student"], cross["data"], micro.cfg, cross["home"])
