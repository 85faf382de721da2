"""What every teacher backend speaks: chat requests in, texts out, under one sampling setting."""

from __future__ import annotations

from dataclasses import asdict, dataclass

Messages = list[dict[str, str]]  # one chat request: [{"role": ..., "content": ...}, ...]


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)
