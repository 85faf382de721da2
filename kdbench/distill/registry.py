"""The algorithm registry: an explicit dict from name to what trains it.

To add an algorithm: write its step function and typed config in a file of its
family, then add one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from kdbench.distill import divergence, dpo, gkd, hidden, minillm, sft, uld
from kdbench.errors import ConfigError
from kdbench.training import StepFn


@dataclass(frozen=True)
class Algorithm:
    name: str
    family: str  # the survey's distillation family
    summary: str  # one line for `kdbench algorithms`
    step: StepFn
    config: type[BaseModel]
    white_box: bool  # compares token distributions or states: one shared vocabulary (unless cross_tokenizer)
    teacher_model: bool = False  # needs the teacher loaded (not only its cached top-k)
    cross_tokenizer: bool = False  # compares distributions over two vocabularies; examples carry the teacher's tokens
    data: str = "response"  # rows it trains on: "response" (prompt, response), "pairs" (chosen, rejected) or
    # "gold" (the pack's reference answers, no teacher)
    needs_methods: tuple[str, ...] = ()  # elicitation methods whose rows it needs
    prepare: Callable | None = None  # (rows, tokenizer, max_length, student) -> examples
    make_extra: Callable | None = None  # (student, teacher, hp) -> trainable modules beside the student


def _div(name: str, summary: str) -> Algorithm:
    return Algorithm(
        name, "divergence", summary, divergence.make_step(name), divergence.DivergenceConfig, white_box=True
    )


ALGORITHMS: dict[str, Algorithm] = {
    "sft": Algorithm(
        "sft",
        "supervised fine-tuning",
        "sequence-level KD: cross-entropy on the teacher's text",
        sft.sft_step,
        sft.SFTConfig,
        white_box=False,
    ),
    "gold": Algorithm(
        "gold",
        "supervised fine-tuning (no teacher)",
        "the baseline KD is measured against: the student fine-tuned on the pack's reference answers",
        sft.sft_step,
        sft.SFTConfig,
        white_box=False,
        data="gold",
    ),
    "fkl": _div("fkl", "forward KL(p||q) to the teacher's token distributions (word-level KD)"),
    "rkl": _div("rkl", "reverse KL(q||p): mode-seeking, on the teacher's text"),
    "jsd": _div(
        "jsd",
        "generalised Jensen-Shannon divergence, weight beta on the teacher (beta = 0: forward "
        "KL, beta = 1: reverse KL, as TRL and GKD define the ends)",
    ),
    "tvd": _div("tvd", "total variation distance between token distributions"),
    "skl": _div("skl", "DistiLLM skew KL(p || a p + (1-a) q)"),
    "srkl": _div("srkl", "DistiLLM skew reverse KL(q || a q + (1-a) p): the mixture leans on the teacher"),
    "gkd": Algorithm(
        "gkd",
        "divergence (on-policy)",
        "GKD: a fraction lambda of batches on the student's own samples",
        gkd.gkd_step,
        gkd.GKDConfig,
        white_box=True,
        teacher_model=True,
    ),
    "minillm": Algorithm(
        "minillm",
        "reinforcement learning",
        "MiniLLM: reverse KL by PPO-clipped policy gradient on "
        "teacher-mixed samples, plus the exact single-step KL (reference defaults)",
        minillm.minillm_step,
        minillm.MiniLLMConfig,
        white_box=True,
        teacher_model=True,
    ),
    "uld": Algorithm(
        "uld",
        "divergence (cross-tokenizer)",
        "Universal Logit Distillation: cross-entropy plus the L1 distance between the sorted teacher and "
        "student probabilities, for a student with another tokenizer",
        uld.uld_step,
        uld.ULDConfig,
        white_box=True,
        teacher_model=True,
        cross_tokenizer=True,
    ),
    "dpo": Algorithm(
        "dpo",
        "rank optimization",
        "DPO on pairs the teacher judged (its answer vs the student's)",
        dpo.dpo_step,
        dpo.DPOConfig,
        white_box=False,
        data="pairs",
        needs_methods=("feedback",),
        prepare=dpo.prepare,
    ),
    "hidden": Algorithm(
        "hidden",
        "feature",
        "projected hidden-state matching (MSE/cosine) beside a logit loss",
        hidden.hidden_step,
        hidden.HiddenConfig,
        white_box=True,
        teacher_model=True,
        make_extra=hidden.make_projections,
    ),
}


def elicitation_methods(cfg) -> list[str]:
    """The configured elicitation methods plus those the selected algorithms need (dpo needs feedback's pairs)."""
    out = list(cfg.elicit.methods)
    for a in cfg.distill.algorithms:
        for m in ALGORITHMS[a].needs_methods if a in ALGORITHMS else ():
            if m not in out:
                out.append(m)
    return out


def hparams_for(name: str, overrides: dict | None) -> BaseModel:
    """The algorithm's typed hyperparameters: paper defaults updated by the run config."""
    try:
        return ALGORITHMS[name].config.model_validate(overrides or {})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, er['loc']))}: {er['msg']}" for er in e.errors())
        fields = ", ".join(ALGORITHMS[name].config.model_fields) or "none"
        raise ConfigError(f"distill.hparams.{name}: {problems} (its settings: {fields})") from None
