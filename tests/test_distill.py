"""Training: sft and fkl on the micro models, checkpoint resume, NaN guard, vocab guard."""

import json

import pytest
import torch

from kdbench.dataset import build_dataset
from kdbench.distill.registry import ALGORITHMS
from kdbench.distill.run import check_algorithms, check_same_vocab, distill
from kdbench.elicit import elicit
from kdbench.errors import ConfigError, KdbenchError, NonFiniteLossError


@pytest.fixture(scope="module")
def data(micro, tmp_path_factory):
    home = tmp_path_factory.mktemp("distill-home")
    res = elicit(micro.pack, micro.models.teacher, micro.cfg, home)
    return build_dataset(micro.pack, res.path, home), home


@pytest.mark.parametrize("algo", ["sft", "fkl", "rkl", "jsd", "tvd", "skl", "srkl", "gkd", "minillm", "hidden", "uld"])
def test_distill_trains_and_saves_a_loadable_student(micro, data, algo):
    from transformers import AutoModelForCausalLM

    info, home = data
    logged = []
    res = distill(
        algo,
        0,
        micro.models.teacher,
        micro.models.student,
        info,
        micro.cfg,
        home,
        log_fn=lambda step, m: logged.append((step, m)),
    )
    assert res.steps > 0 and res.train_tokens > 0 and not res.cached
    assert logged and "train.loss" in logged[0][1]
    model = AutoModelForCausalLM.from_pretrained(res.model_dir)
    before = AutoModelForCausalLM.from_pretrained(micro.models.student)
    changed = any(not torch.equal(a, b) for a, b in zip(model.parameters(), before.parameters(), strict=False))
    assert changed
    again = distill(algo, 0, micro.models.teacher, micro.models.student, info, micro.cfg, home)
    assert again.cached and again.model_dir == res.model_dir


def test_resume_from_checkpoint(micro, data, monkeypatch):
    """Kill training after a checkpoint; the rerun resumes at that step and ends where a clean run ends."""
    import kdbench.training as trainer

    info, home = data
    cfg = micro.cfg.model_copy(deep=True)
    cfg.distill.train.epochs = 3
    real_save = trainer._save_checkpoint

    def save_then_die(ckpt, *a, **k):
        real_save(ckpt, *a, **k)
        raise KeyboardInterrupt  # stands in for the process dying right after a checkpoint

    monkeypatch.setattr(trainer, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        distill("sft", 7, micro.models.teacher, micro.models.student, info, cfg, home)
    monkeypatch.setattr(trainer, "_save_checkpoint", real_save)
    resumed = distill("sft", 7, micro.models.teacher, micro.models.student, info, cfg, home)
    assert resumed.resumed_from == cfg.distill.train.save_every
    clean = distill(
        "sft",
        7,
        micro.models.teacher,
        micro.models.student,
        info,
        cfg.model_copy(update={"home": str(home / "other")}),
        home / "other",
    )
    assert clean.resumed_from == 0
    from safetensors.torch import load_file

    a = load_file(f"{resumed.model_dir}/model.safetensors")
    b = load_file(f"{clean.model_dir}/model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_nan_loss_stops_with_step(micro, data, monkeypatch):
    info, home = data
    algo = ALGORITHMS["sft"]
    calls = {"n": 0}

    def poisoned(ctx, batch):
        loss, logs = algo.step(ctx, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), logs

    monkeypatch.setitem(ALGORITHMS, "sft", type(algo)(**{**algo.__dict__, "step": poisoned}))
    with pytest.raises(NonFiniteLossError) as e:
        distill("sft", 11, micro.models.teacher, micro.models.student, info, micro.cfg, home)
    assert e.value.step == 2 and e.value.checkpoint.endswith("checkpoint")  # a checkpoint at step 2 is kept


def test_vocabulary_guard_names_both_and_the_cross_tokenizer_and_black_box_options(micro):
    from transformers import AutoTokenizer

    from kdbench.models.tiny import train_tokenizer

    t = AutoTokenizer.from_pretrained(micro.models.teacher)
    other = train_tokenizer(["completely different text for another vocabulary"] * 20, vocab_size=120)
    with pytest.raises(
        KdbenchError,
        match=r"teacher 'T' \(vocabulary of \d+ tokens\) and the student 'S' "
        r"\(vocabulary of \d+ tokens\).*cross-tokenizer algorithm: uld, or a black-box algorithm: sft",
    ):
        check_same_vocab("fkl", t, other, "T", "S")
    check_same_vocab("fkl", t, t, "T", "S")


def test_unknown_algorithm():
    with pytest.raises(ConfigError, match=r"unknown algorithm 'fkll' \(did you mean 'fkl'\?\)"):
        check_algorithms(["fkll"])
    assert json.dumps(sorted(ALGORITHMS))


def test_dpo_on_feedback_pairs_and_topk_fkl(micro, tmp_path):
    from kdbench.dataset import add_topk

    res = elicit(
        micro.pack,
        micro.models.teacher,
        micro.cfg,
        tmp_path,
        student_ref=micro.models.student,
        methods=["labeling", "feedback"],
    )
    info = add_topk(build_dataset(micro.pack, res.path, tmp_path), micro.models.teacher, micro.cfg)
    dpo = distill("dpo", 0, micro.models.teacher, micro.models.student, info, micro.cfg, tmp_path)
    assert dpo.steps > 0 and dpo.hparams["beta"] == 0.1
    logged = []
    fkl = distill(
        "fkl",
        0,
        micro.models.teacher,
        micro.models.student,
        info,
        micro.cfg,
        tmp_path,
        log_fn=lambda s, m: logged.append(m),
    )
    assert fkl.steps > 0 and all(m["train.loss"] >= 0 for m in logged)
    online_cfg = micro.cfg.model_copy(deep=True)
    online_cfg.distill.teacher_logits = "online"
    online = distill("fkl", 0, micro.models.teacher, micro.models.student, info, online_cfg, tmp_path)
    assert online.model_dir != fkl.model_dir  # a different recipe, a different result folder


def test_dpo_without_pairs_says_which_method(micro, data):
    info, home = data
    with pytest.raises(KdbenchError, match="needs pairs from the feedback elicitation"):
        distill("dpo", 0, micro.models.teacher, micro.models.student, info, micro.cfg, home)


def test_lora_students_train_adapters_and_save_a_merged_model(micro, data):
    from transformers import AutoModelForCausalLM

    info, home = data
    cfg = micro.cfg.model_copy(deep=True)
    cfg.distill.train.lora, cfg.distill.train.lora_r = True, 4
    res = distill("fkl", 3, micro.models.teacher, micro.models.student, info, cfg, home)
    model = AutoModelForCausalLM.from_pretrained(res.model_dir)  # a plain model: adapters merged
    before = AutoModelForCausalLM.from_pretrained(micro.models.student)
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), before.parameters(), strict=False))
