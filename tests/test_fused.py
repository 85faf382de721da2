"""Fused divergences and cross-entropy (from hidden states, chunk by chunk) equal the unfused path.

The unfused path is the one every algorithm used before: logits = hidden @ W.T (+ b) for the whole
batch, then the chunked divergence of losses.py. Values and gradients (hidden states, projection
weight, bias; with tied embeddings, the whole model) must agree to float32 rounding.
"""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kdbench.distill import losses
from kdbench.distill.fused import Head, auto_chunk, fused_cross_entropy, fused_divergence
from kdbench.distill.losses import DIVERGENCES, TopK
from kdbench.training import causal_lm_ce

TERMS = {
    "fkl": losses.fkl_terms,
    "rkl": losses.rkl_terms,
    "jsd": lambda a, b: losses.jsd_terms(a, b, 0.3),
    "tvd": losses.tvd_terms,
    "skl": lambda a, b: losses.skl_terms(a, b, 0.1),
    "srkl": lambda a, b: losses.srkl_terms(a, b, 0.1),
}


def inputs(B=2, T=9, H=16, V=37, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, H, generator=g, requires_grad=True)
    w = (torch.randn(V, H, generator=g) * 0.5).requires_grad_(True)
    b = (torch.randn(V, generator=g) * 0.1).requires_grad_(True) if bias else None
    ht, wt = torch.randn(B, T, 12, generator=g), torch.randn(V, 12, generator=g) * 0.5
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0, 0] = True
    return h, w, b, ht, wt, mask


def grads(loss, *xs):
    return torch.autograd.grad(loss, [x for x in xs if x is not None])


@pytest.mark.parametrize("name", list(TERMS))
@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("chunk", [1, 4, 64])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_unfused_against_a_teacher_head(name, tau, chunk, bias):
    h, w, b, ht, wt, mask = inputs(bias=bias)
    fused = fused_divergence(TERMS[name], Head(h, w, b), Head(ht, wt), mask, temperature=tau, chunk_size=chunk)
    logits = h @ w.T + (b if b is not None else 0)
    plain = losses.divergence(TERMS[name], logits, ht @ wt.T, mask, temperature=tau)
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5, abs=1e-6)
    for gf, gp in zip(grads(fused, h, w, b), grads(plain, h, w, b), strict=True):
        torch.testing.assert_close(gf, gp, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_equals_unfused_against_dense_logits_and_a_topk_cache(tau):
    h, w, b, ht, wt, mask = inputs()
    t_logits = ht @ wt.T
    lp = torch.log_softmax(t_logits, -1)
    vals, ids = lp.topk(6, dim=-1)
    for teacher in (t_logits, TopK(ids, vals)):
        for name in ("fkl", "rkl", "jsd"):
            fused = fused_divergence(TERMS[name], Head(h, w, b), teacher, mask, temperature=tau, chunk_size=3)
            plain = losses.divergence(TERMS[name], h @ w.T + b, teacher, mask, temperature=tau)
            assert fused.item() == pytest.approx(plain.item(), rel=1e-5, abs=1e-6)
            for gf, gp in zip(grads(fused, h, w, b), grads(plain, h, w, b), strict=True):
                torch.testing.assert_close(gf, gp, rtol=1e-4, atol=1e-6)


def test_public_losses_and_the_fused_path_agree():
    """The DIVERGENCES functions (what algorithms call on logits, at their defaults) and the fused path
    give one number."""
    h, w, b, ht, wt, mask = inputs()
    at_defaults = {**TERMS, "jsd": lambda a, c: losses.jsd_terms(a, c, 0.5)}
    for name in DIVERGENCES:
        plain = DIVERGENCES[name](h @ w.T + b, ht @ wt.T, mask)
        fused = fused_divergence(at_defaults[name], Head(h, w, b), Head(ht, wt), mask)
        assert fused.item() == pytest.approx(plain.item(), rel=1e-5, abs=1e-6), name


@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_cross_entropy_equals_unfused(chunk):
    h, w, b, _, _, mask = inputs()
    ids = torch.randint(0, w.shape[0], mask.shape)
    fused = fused_cross_entropy(Head(h, w, b), ids, mask, chunk_size=chunk)
    plain = causal_lm_ce(h @ w.T + b, ids, mask)
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5)
    for gf, gp in zip(grads(fused, h, w, b), grads(plain, h, w, b), strict=True):
        torch.testing.assert_close(gf, gp, rtol=1e-4, atol=1e-6)


def _llama(tied: bool, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=53,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(cfg)


@pytest.mark.parametrize("tied", [True, False])
def test_whole_model_gradients_match_with_tied_and_untied_embeddings(tied):
    """Through a real model: the fused loss on its final hidden states and lm_head gives every parameter
    (embeddings included, which a tied head shares) the gradient the logits path gives."""
    student, teacher = _llama(tied, 0), _llama(True, 1).eval()
    ids = torch.randint(0, 53, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 7:] = False
    with torch.no_grad():
        t_logits = teacher(input_ids=ids).logits
    out = student(input_ids=ids, output_hidden_states=True)
    head = Head(out.hidden_states[-1], student.get_output_embeddings().weight)
    torch.testing.assert_close(head.hidden @ head.weight.T, out.logits, rtol=1e-5, atol=1e-5)  # the head is all
    fused = fused_divergence(losses.rkl_terms, head, t_logits, mask, temperature=2.0, chunk_size=4)
    student.zero_grad()
    fused.backward()
    g_fused = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad()
    losses.rkl(student(input_ids=ids).logits, t_logits, mask, temperature=2.0).backward()
    for n, p in student.named_parameters():
        torch.testing.assert_close(g_fused[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_empty_mask_and_bad_shapes():
    h, w, b, ht, wt, mask = inputs()
    zero = fused_divergence(losses.fkl_terms, Head(h, w, b), Head(ht, wt), torch.zeros_like(mask))
    assert zero.item() == 0.0
    with pytest.raises(ValueError, match="one vocabulary"):
        fused_divergence(losses.fkl_terms, Head(h, w, b), Head(ht, wt[:5]), mask)
    with pytest.raises(ValueError, match="mask"):
        fused_divergence(losses.fkl_terms, Head(h, w, b), Head(ht, wt), mask[:, :3])
    assert auto_chunk(49_152) >= 8 and auto_chunk(2048) > auto_chunk(49_152)


def test_backward_scales_with_upstream_gradient():
    h, w, b, ht, wt, mask = inputs()
    (g1,) = torch.autograd.grad(fused_divergence(losses.fkl_terms, Head(h, w, b), Head(ht, wt), mask), h)
    (g3,) = torch.autograd.grad(3.0 * fused_divergence(losses.fkl_terms, Head(h, w, b), Head(ht, wt), mask), h)
    torch.testing.assert_close(g3, 3 * g1)


@pytest.mark.parametrize("algo", ["sft", "fkl", "rkl", "jsd", "tvd", "skl", "srkl", "gkd", "minillm", "hidden"])
def test_every_algorithm_step_is_the_same_fused_or_not(micro, algo):
    """One training step of each logit-based algorithm on the micro models: the loss and every parameter's
    gradient agree whether the step is fused (hidden states + projection) or works on full logits. gkd runs
    on-policy and minillm samples: both draw from one seeded generator on each side."""
    import copy

    from kdbench.data import collate, tokenize_example
    from kdbench.distill.registry import ALGORITHMS, hparams_for
    from kdbench.models.loading import load_model
    from kdbench.training import StepContext

    student, tok = load_model(micro.models.student)
    teacher, _ = load_model(micro.models.teacher)
    teacher.eval().requires_grad_(False)
    rows = [("What is the capital of France?", "Paris is the capital."), ("Name a river.", "The Nile.")]
    batch = collate([tokenize_example(tok, p, r, max_length=64) for p, r in rows], tok.pad_token_id)
    a = ALGORITHMS[algo]
    hp = hparams_for(algo, {"lmbda": 1.0} if algo == "gkd" else {})
    results = []
    for fused in (True, False):
        model = copy.deepcopy(student).train()
        torch.manual_seed(0)  # hidden's projections start the same on both sides
        extra = a.make_extra(model, teacher, hp) if a.make_extra else {}
        ctx = StepContext(
            student=model,
            teacher=teacher,
            tokenizer=tok,
            hp=hp,
            device=torch.device("cpu"),
            generator=torch.Generator().manual_seed(3),
            extra=extra,
            fused=fused,
        )
        loss, _ = a.step(ctx, dict(batch))
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (l1, g1), (l2, g2) = results
    assert l1 == pytest.approx(l2, rel=1e-4, abs=1e-6)
    assert g1.keys() == g2.keys() and g1
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-3, atol=1e-6, msg=n)
