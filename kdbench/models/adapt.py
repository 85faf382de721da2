"""Domain adaptation of a pretrained teacher: continued training on the pack's knowledge before it teaches.

A benchmark measures how much of a teacher's domain knowledge reaches a
student, which says little when the teacher has none to give: a small general
instruct model answers a pack's questions at about chance (SmolLM2-135M-Instruct,
as ``smollm2``: 20% accuracy on law_mc, 27% length-normalised, four options).
``models.teacher_adapt`` with ``epochs > 0`` fine-tunes it on the pack's
training side first, as the tiny teacher is trained (kdbench.models.tiny), and
the adapted model is the teacher from then on (elicitation, baselines,
distillation). Measured on this 2-core CPU machine: one epoch at lr 1e-4 (1,040
turns, 130 steps, about 3 s a step) took SmolLM2 on law_mc to 34% accuracy (36%
length-normalised).

The curriculum is the tiny teacher's without its noisy cue prompts, which help
a model that knows no language at all but only add malformed questions for one
that does: every knowledge item as a question/answer turn, and every seed that
names a fact (or has a checkable reference) answered with it, with and without
the labeling system prompt (elicitation asks with it, evaluation without).
Evaluation items are never used.

The result is cached under ``<home>/models/`` by (teacher identity, the pack's
training files, the settings) and training resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from kdbench.config import TeacherAdaptConfig, TrainConfig
from kdbench.data import content_hash, read_done, tokenize_example, write_json
from kdbench.locks import locked
from kdbench.log import get_logger
from kdbench.models.loading import identity, load_model
from kdbench.packs.loader import DomainPack
from kdbench.training import sft_step, train

log = get_logger(__name__)

ADAPT_VERSION = 1  # bump when the recipe changes so caches rebuild


@dataclass
class AdaptedTeacher:
    path: str  # a model folder, usable as a model reference
    cached: bool
    info: dict


def adaptation_turns(pack: DomainPack) -> list[tuple[str | None, str, str]]:
    """(system prompt or None, question, answer) for every turn the teacher is trained on."""
    system = pack.teacher_system("labeling")
    facts = {k.id: k.statement for k in pack.knowledge}
    plain = [(k.question, k.statement) for k in pack.knowledge if k.question]
    seeded = [(s.prompt, facts[s.fact]) for s in pack.seeds if s.fact in facts]
    seeded += [(s.prompt, f"The answer is {s.reference}.") for s in pack.seeds if s.reference and not s.fact]
    turns: list[tuple[str | None, str, str]] = [(None, q, a) for q, a in plain + seeded]
    return turns + [(system, q, a) for q, a in seeded]


def adapt_teacher(
    teacher: str,
    pack: DomainPack,
    settings: TeacherAdaptConfig,
    home: Path,
    *,
    revision: str | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    device: str = "cpu",
) -> AdaptedTeacher:
    """The teacher ``teacher`` (a loadable reference) trained on ``pack``'s knowledge with ``settings``, cached."""
    # save_every changes when checkpoints are written, not the model: it stays out of the key
    recipe = settings.model_dump(exclude={"save_every"})
    key = content_hash(ADAPT_VERSION, identity(teacher, revision), pack.train_hash, recipe, dtype)
    name = Path(teacher).name if Path(teacher).exists() else teacher.replace("/", "--")
    root = Path(home) / "models" / f"{name}-adapted-{pack.name}-{key}"
    with locked(root):
        done = read_done(root / "DONE")
        if done is not None and (root / "model").is_dir():
            return AdaptedTeacher(str(root / "model"), True, done)
        adapted = _adapt(teacher, pack, settings, root, key, revision, dtype, trust_remote_code, device)
    _free_accelerator_memory()
    return adapted


def _free_accelerator_memory() -> None:
    """Hand the memory PyTorch's CUDA cache kept from the adaptation back to the device.

    Elicitation comes next, and the vllm backend's engine (its own process) refuses to start unless its share
    of the GPU (90% by default) is free on the whole device: the cache this process kept from training a
    135M-parameter teacher (weights, gradients, AdamW states, activations) can hold more than the rest."""
    import gc

    import torch

    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def _adapt(teacher, pack, settings, root: Path, key, revision, dtype, trust_remote_code, device) -> AdaptedTeacher:
    model, tok = load_model(teacher, revision=revision, dtype=dtype, device="cpu", trust_remote_code=trust_remote_code)
    examples = [
        tokenize_example(tok, q, a, system=system, max_length=settings.max_length)
        for system, q, a in adaptation_turns(pack)
    ]
    cfg = TrainConfig(
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        max_length=settings.max_length,
        save_every=settings.save_every,
        warmup_ratio=0.05,
        weight_decay=0.0,
    )
    log.info(
        f"{pack.name}: adapting the teacher {teacher} to the domain: {len(examples)} turns, "
        f"{settings.epochs} epochs at lr {settings.lr}"
    )
    result = train(
        model,
        tok,
        examples,
        sft_step,
        cfg=cfg,
        out_dir=root,
        seed=settings.seed,
        device=device,
        desc=f"{pack.name}: adapt the teacher",
    )
    info = {
        "pack": pack.name,
        "train_hash": pack.train_hash,
        "teacher": identity(teacher, revision),
        "settings": settings.model_dump(),
        "examples": len(examples),
        "steps": result.steps,
        "final_loss": result.final_loss,
        "train_seconds": round(result.seconds, 1),
        "resumed_from": result.resumed_from,
    }
    card = {"fingerprint": f"adapted-{key}", "role": "adapted-teacher", **info}
    (result.model_dir / "kdbench.json").write_text(json.dumps(card, indent=2))
    shutil.rmtree(root / "checkpoint", ignore_errors=True)
    write_json(root / "DONE", info)
    log.info(f"{pack.name}: adapted teacher (final loss {result.final_loss:.3f}) at {result.model_dir}")
    return AdaptedTeacher(str(result.model_dir), False, info)
