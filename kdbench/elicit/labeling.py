"""labeling: the teacher answers the pack's seed inputs under its instructions,
optionally with a rationale (chain of thought) before the answer."""

from __future__ import annotations

from kdbench.data import messages_for

RATIONALE = "Think step by step, then give the final answer on a last line starting with 'Answer:'."


def labeling_messages(ctx, prompts: list[str]) -> list[list[dict]]:
    system = ctx.pack.teacher_system("labeling")
    if ctx.cfg.elicit.rationale:
        system += "\n" + RATIONALE
    return [messages_for(p, system) for p in prompts]


def label_prompts(ctx, prompts: list[str], method: str = "labeling", account: str | None = None) -> list[str]:
    """The teacher's answers to ``prompts``, cached under ``method`` (so labeling's cache serves every method
    that needs the teacher's own answer) and counted in the stats under ``account`` (default: ``method``)."""
    return ctx.teacher.generate(method, labeling_messages(ctx, prompts), ctx.sampling, account=account)


def label(ctx) -> list[dict]:
    """One training row per seed: prompt -> the teacher's answer."""
    seeds = ctx.seeds
    outs = label_prompts(ctx, [s.prompt for s in seeds])
    return [
        {
            "id": f"labeling-{s.id}",
            "method": "labeling",
            "topic": s.topic,
            "prompt": s.prompt,
            "response": o,
            "seed_id": s.id,
            "reference": s.reference,
            "check": s.check,
        }
        for s, o in zip(seeds, outs, strict=True)
    ]
