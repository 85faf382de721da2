"""Domain adaptation of a pretrained teacher (models.teacher_adapt): curriculum, cache, resume, wiring."""

import json

import pytest
import torch
from safetensors.torch import load_file

from kdbench.config import TeacherAdaptConfig
from kdbench.models.adapt import adapt_teacher, adaptation_turns
from kdbench.models.loading import identity

SETTINGS = TeacherAdaptConfig(epochs=1.0, lr=1e-3, batch_size=8, max_length=96, save_every=2)


def test_the_curriculum_is_the_packs_training_side_without_cues(micro):
    pack = micro.pack
    turns = adaptation_turns(pack)
    facts = {k.id for k in pack.knowledge}
    answered = sum(1 for s in pack.seeds if s.fact in facts or (s.reference and not s.fact))
    with_system = [t for t in turns if t[0] is not None]
    assert {t[0] for t in with_system} == {pack.teacher_system("labeling")}
    assert len(with_system) == answered  # each answered seed once with the labeling system prompt...
    assert len(turns) == len(pack.knowledge) + 2 * answered  # ...and once without; every fact once
    questions = {q for _, q, _ in turns}
    assert questions == {k.question for k in pack.knowledge} | {
        s.prompt for s in pack.seeds if s.fact in facts or (s.reference and not s.fact)
    }  # no cue prompts, no eval items


def test_adaptation_trains_resumes_and_is_cached(micro, tmp_path, monkeypatch):
    import kdbench.training as trainer

    teacher = micro.models.teacher
    real_save = trainer._save_checkpoint

    def save_then_die(ckpt, *a, **k):
        real_save(ckpt, *a, **k)
        raise KeyboardInterrupt  # the process dying right after its first checkpoint

    monkeypatch.setattr(trainer, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        adapt_teacher(teacher, micro.pack, SETTINGS, tmp_path)
    monkeypatch.setattr(trainer, "_save_checkpoint", real_save)

    res = adapt_teacher(teacher, micro.pack, SETTINGS, tmp_path)
    assert not res.cached and res.info["resumed_from"] == SETTINGS.save_every
    card = json.loads(open(f"{res.path}/kdbench.json").read())
    assert card["role"] == "adapted-teacher" and identity(res.path)["fingerprint"] == card["fingerprint"]
    before, after = load_file(f"{teacher}/model.safetensors"), load_file(f"{res.path}/model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)

    again = adapt_teacher(teacher, micro.pack, SETTINGS.model_copy(update={"save_every": 7}), tmp_path)
    assert again.cached and again.path == res.path  # checkpoint frequency is not part of the recipe
    other = adapt_teacher(teacher, micro.pack, SETTINGS.model_copy(update={"epochs": 0.5}), tmp_path)
    assert other.path != res.path


def test_prepare_models_uses_the_adapted_teacher(micro):
    from kdbench.steps import prepare_models

    cfg = micro.cfg.model_copy(deep=True)
    cfg.models.teacher = micro.models.teacher  # a folder: a "pretrained" teacher as far as kdbench knows
    cfg.models.teacher_adapt = SETTINGS.model_copy(update={"epochs": 0.5})
    models = prepare_models(cfg.model_dump(mode="json"))
    assert models.teacher != micro.models.teacher and models.students == [micro.models.student]
    assert json.loads(open(f"{models.teacher}/kdbench.json").read())["role"] == "adapted-teacher"
