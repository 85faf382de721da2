"""sft: sequence-level KD (Kim & Rush, 2016): next-token cross-entropy on the
teacher's generated text. Black-box: needs only the teacher's outputs. The step
is the training loop's own cross-entropy step (kdbench.training.sft_step)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from kdbench.training import sft_step

__all__ = ["SFTConfig", "sft_step"]


class SFTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
