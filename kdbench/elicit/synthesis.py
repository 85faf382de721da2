"""expansion and curation: the teacher writes new inputs, which it then labels.

expansion (self-instruct style): shown a few seed demonstrations of a topic, the
teacher writes a new input. curation: from the pack's meta-information (its
description and a topic, and, with ``curation_documents_per_topic``, one of the
pack's knowledge documents) the teacher writes an input from scratch. Both
filter what it writes: empty, near-duplicate of a seed or of an earlier new
input (ROUGE-L F1 >= dedup_rouge), or sharing an 8-word run with an evaluation
item (leakage). The survivors are labeled like seeds.
"""

from __future__ import annotations

import random

from kdbench.backends import Sampling
from kdbench.data import messages_for
from kdbench.elicit.labeling import label_prompts


def _clean(text: str) -> str:
    line = text.strip().split("\n")[0].strip()
    for prefix in ("question:", "new question:", "q:"):
        if line.lower().startswith(prefix):
            line = line[len(prefix) :].strip()
    return line[:300]


class NearDuplicateFilter:
    """ROUGE-L F1 against everything accepted so far (seeds first)."""

    def __init__(self, existing: list[str], threshold: float):
        from rouge_score import rouge_scorer

        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self.kept = list(existing)
        self.threshold = threshold

    def accept(self, text: str) -> bool:
        if any(self.scorer.score(k, text)["rougeL"].fmeasure >= self.threshold for k in self.kept):
            return False
        self.kept.append(text)
        return True


def _filter_and_label(ctx, method: str, drafts: list[tuple[str, str]]) -> list[dict]:
    """drafts: (topic, raw teacher text) -> labeled rows; filter counts go to ctx.teacher.stats."""
    index = ctx.pack.eval_index()
    dedup = NearDuplicateFilter([s.prompt for s in ctx.pack.seeds], ctx.cfg.elicit.dedup_rouge)
    counts: dict[str, float] = {"drafts": len(drafts), "empty": 0, "near_duplicate": 0, "leaked": 0}
    kept: list[tuple[str, str]] = []
    for topic, raw in drafts:
        text = _clean(raw)
        if len(text.split()) < 3:
            counts["empty"] += 1
        elif index.overlaps(text):
            counts["leaked"] += 1
        elif not dedup.accept(text):
            counts["near_duplicate"] += 1
        else:
            kept.append((topic, text))
    counts["kept"] = len(kept)
    counts["filter_rate"] = 1 - len(kept) / max(len(drafts), 1)
    counts["temperature"] = ctx.cfg.elicit.expansion_temperature
    ctx.teacher.stats.setdefault(method, {}).update(counts)
    answers = label_prompts(ctx, [t for _, t in kept], method=f"{method}-label")
    return [
        {"id": f"{method}-{i:05d}", "method": method, "topic": topic, "prompt": text, "response": a}
        for i, ((topic, text), a) in enumerate(zip(kept, answers, strict=True))
    ]


def expand(ctx) -> list[dict]:
    e, pack = ctx.cfg.elicit, ctx.pack
    rng = random.Random(f"expansion:{pack.name}")
    system = pack.teacher_system("expansion").replace("{topic}", "the topic below")
    requests, topics = [], []
    for topic in pack.spec.topics:
        pool = [s.prompt for s in pack.seeds if s.topic == topic]
        for _ in range(e.expansion_per_topic if pool else 0):
            demos = rng.sample(pool, min(e.expansion_demos, len(pool)))
            instruction = pack.spec.teacher.instructions.get("expansion", "Write one new question about {topic}.")
            text = (
                instruction.replace("{topic}", topic.replace("_", " "))
                + "\nExamples:\n"
                + "\n".join(f"- {d}" for d in demos)
                + "\nNew question:"
            )
            requests.append(messages_for(text, system, wrap=False))
            topics.append(topic)
    sampling = Sampling(max_new_tokens=48, temperature=e.expansion_temperature, top_p=0.95, seed=0)
    outs = ctx.teacher.generate("expansion", requests, sampling)
    return _filter_and_label(ctx, "expansion", list(zip(topics, outs, strict=True)))


def curate(ctx) -> list[dict]:
    e, pack = ctx.cfg.elicit, ctx.pack
    system = pack.teacher_system("curation").replace("{topic}", "the topic below")
    instruction = pack.spec.teacher.instructions.get("curation", "Write a question about {topic}.")
    rng = random.Random(f"curation:{pack.name}")
    requests, topics = [], []
    for topic in pack.spec.topics:
        about = instruction.replace("{topic}", topic.replace("_", " "))
        for i in range(e.curation_per_topic):
            text = f"Domain: {pack.spec.description}\n{about}\nWrite only the question (number {i + 1})."
            requests.append(messages_for(text, system, wrap=False))
            topics.append(topic)
        docs = [k.statement for k in pack.knowledge if k.topic == topic]  # an answer, or a plain statement
        for doc in rng.sample(docs, min(e.curation_documents_per_topic, len(docs))):
            text = (
                f"Domain: {pack.spec.description}\nDocument: {doc}\n{about}\n"
                "Write only a question this document answers."
            )
            requests.append(messages_for(text, system, wrap=False))
            topics.append(topic)
    sampling = Sampling(max_new_tokens=48, temperature=e.expansion_temperature, top_p=0.95, seed=1)
    outs = ctx.teacher.generate("curation", requests, sampling)
    rows = _filter_and_label(ctx, "curation", list(zip(topics, outs, strict=True)))
    ctx.teacher.stats["curation"]["from_documents"] = len(requests) - e.curation_per_topic * len(pack.spec.topics)
    return rows
