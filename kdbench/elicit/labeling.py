"""labeling: the teacher answers the pack's seed inputs under its instructions,
optionally with a rationale (chain of thought) before the answer."""

from __future__ import annotations

from kdbench.data import messages_for
from kdbench.elicit.teacher import teacher_system

RATIONALE = "Think step by step, then give the final answer on a last line starting with 'Answer:'."


def label(ctx) -> list[dict]:
    """One training row per seed: prompt -> the teacher's answer."""
    system = teacher_system(ctx.pack, "labeling")
    if ctx.cfg.elicit.rationale:
        system += "\n" + RATIONALE
    seeds = ctx.seeds
    outs = ctx.teacher.generate("labeling", [messages_for(s.prompt, system) for s in seeds], ctx.sampling)
    return [{"id": f"labeling-{s.id}", "method": "labeling", "topic": s.topic, "prompt": s.prompt,
             "response": o, "seed_id": s.id, "reference": s.reference, "check": s.check}
            for s, o in zip(seeds, outs, strict=True)]
