"""The algorithm registry: an explicit dict from name to what trains it.

To add an algorithm: write its step function and typed config in a file of its
family, then add one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from kdbench.distill import divergence, sft
from kdbench.distill.trainer import StepFn


@dataclass(frozen=True)
class Algorithm:
    name: str
    family: str  # the survey's distillation family
    summary: str  # one line for `kdbench algorithms`
    step: StepFn
    config: type[BaseModel]
    white_box: bool  # needs teacher logits/states, hence one shared vocabulary


ALGORITHMS: dict[str, Algorithm] = {
    "sft": Algorithm("sft", "supervised fine-tuning", "sequence-level KD: cross-entropy on the teacher's text",
                     sft.sft_step, sft.SFTConfig, white_box=False),
    "fkl": Algorithm("fkl", "divergence", "forward KL(p||q) to the teacher's token distributions",
                     divergence.make_step("fkl"), divergence.DivergenceConfig, white_box=True),
    "rkl": Algorithm("rkl", "divergence", "reverse KL(q||p), mode-seeking, on teacher text",
                     divergence.make_step("rkl"), divergence.DivergenceConfig, white_box=True),
    "jsd": Algorithm("jsd", "divergence", "generalised Jensen-Shannon divergence (beta)",
                     divergence.make_step("jsd"), divergence.DivergenceConfig, white_box=True),
    "tvd": Algorithm("tvd", "divergence", "total variation distance between token distributions",
                     divergence.make_step("tvd"), divergence.DivergenceConfig, white_box=True),
    "skl": Algorithm("skl", "divergence", "DistiLLM skew KL(p || a p + (1-a) q)",
                     divergence.make_step("skl"), divergence.DivergenceConfig, white_box=True),
    "srkl": Algorithm("srkl", "divergence", "DistiLLM skew reverse KL(q || (1-a) q + a p)",
                      divergence.make_step("srkl"), divergence.DivergenceConfig, white_box=True),
}


def hparams_for(name: str, overrides: dict | None) -> BaseModel:
    """The algorithm's typed hyperparameters: paper defaults updated by the run config."""
    from pydantic import ValidationError

    from kdbench.errors import ConfigError

    try:
        return ALGORITHMS[name].config.model_validate(overrides or {})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, er['loc']))}: {er['msg']}" for er in e.errors())
        fields = ", ".join(ALGORITHMS[name].config.model_fields) or "none"
        raise ConfigError(f"distill.hparams.{name}: {problems} (its settings: {fields})") from None
