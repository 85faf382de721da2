"""feedback and self_knowledge: the teacher judges the student's outputs.

feedback: the student (before distillation) answers the seeds; the teacher
judges its answer against the teacher's own. The pair, ordered by the judgement,
is what ``dpo`` trains on; where the student lost, the teacher's answer is also
kept as a correction ``sft`` and the divergences can use.

self_knowledge: the student samples answers to the seeds; a filter keeps the
good ones (a generator's checkable answer when the seed has one, else the
teacher's judgement) and the student trains on its own kept outputs. A student
that cannot answer yet first learns the teacher's labels of the seeds
(``elicit.self_knowledge_warmup_epochs``, as in ReST's grow step): an untrained
student samples noise that no filter keeps. ``auto`` warms up the embedded tiny
student, which starts untrained, for ``distill.train.epochs`` and leaves any other
student as it is. The warmed-up student is cached under <home>/students/.
Identical samples for one seed are one row.

Judges: ``likelihood`` (white-box: the teacher's mean log-probability per token
of each answer; needs a backend that can score) or ``prompt`` (any teacher,
black-box: it is asked which answer is better, or whether one is correct).
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from kdbench.backends import Sampling
from kdbench.data import content_hash, messages_for, read_done, tokenize_example, write_json
from kdbench.elicit.labeling import label_prompts, labeling_messages
from kdbench.elicit.teacher import CachedModel
from kdbench.locks import locked
from kdbench.models.loading import load_model, untrained
from kdbench.packs.generators import verify
from kdbench.training import sft_step, train

PAIR_JUDGE = (
    "Question: {q}\nAnswer A: {a}\nAnswer B: {b}\n"
    "Which answer is more correct and complete? Reply with one letter, A or B."
)
SINGLE_JUDGE = "Question: {q}\nAnswer: {a}\nIs this answer correct? Reply yes or no."


def judge_kind(ctx) -> str:
    j = ctx.cfg.elicit.judge
    if j != "auto":
        return j
    return "likelihood" if ctx.teacher.backend_name in ("hf", "vllm") else "prompt"


def _mean_logprobs(ctx, method: str, prompts: list[str], answers: list[str]) -> list[float]:
    scores = ctx.teacher.score(method, labeling_messages(ctx, prompts), answers)
    return [s / max(n, 1) for s, n in scores]


def _prompt_pairs(ctx, prompts, first, second) -> list[bool]:
    """True where the teacher prefers ``first``; the order shown is shuffled (seeded) against position bias."""
    rng = random.Random(f"judge:{ctx.pack.name}")
    flips = [rng.random() < 0.5 for _ in prompts]
    system = ctx.pack.teacher_system("feedback")
    reqs = [
        messages_for(PAIR_JUDGE.format(q=q, a=b if f else a, b=a if f else b), system, wrap=False)
        for q, a, b, f in zip(prompts, first, second, flips, strict=True)
    ]
    outs = ctx.teacher.generate("feedback-judge", reqs, Sampling(max_new_tokens=4))
    picks_a = [o.strip().upper().startswith("A") for o in outs]
    return [(not pa) if f else pa for pa, f in zip(picks_a, flips, strict=True)]


def feedback(ctx) -> list[dict]:
    seeds = ctx.seeds
    prompts = [s.prompt for s in seeds]
    teacher_ans = label_prompts(ctx, prompts, account="feedback-teacher")  # labeling's cache serves these
    student_ans = ctx.student.generate("feedback-student", [messages_for(p) for p in prompts], ctx.sampling)
    kind = judge_kind(ctx)
    # an empty answer loses without a judge; the judge compares answers that both say something
    contested = [i for i, (t, s) in enumerate(zip(teacher_ans, student_ans, strict=True)) if t.strip() and s.strip()]
    teacher_wins = [bool(t.strip()) for t in teacher_ans]
    if contested and kind == "likelihood":
        t_score = _mean_logprobs(ctx, "feedback", [prompts[i] for i in contested], [teacher_ans[i] for i in contested])
        s_score = _mean_logprobs(ctx, "feedback", [prompts[i] for i in contested], [student_ans[i] for i in contested])
        for i, t, s in zip(contested, t_score, s_score, strict=True):
            teacher_wins[i] = t >= s
    elif contested:
        wins = _prompt_pairs(
            ctx,
            [prompts[i] for i in contested],
            [teacher_ans[i] for i in contested],
            [student_ans[i] for i in contested],
        )
        for i, w in zip(contested, wins, strict=True):
            teacher_wins[i] = w
    rows, same = [], 0
    for s, ta, sa, tw in zip(seeds, teacher_ans, student_ans, teacher_wins, strict=True):
        if ta.strip() == sa.strip() or not (ta.strip() or sa.strip()):
            same += 1
            continue
        chosen, rejected = (ta, sa) if tw else (sa, ta)
        rows.append(
            {
                "id": f"feedback-{s.id}",
                "method": "feedback",
                "topic": s.topic,
                "prompt": s.prompt,
                "chosen": chosen,
                "rejected": rejected,
            }
        )
        if tw:
            rows.append(
                {
                    "id": f"feedback-correction-{s.id}",
                    "method": "feedback",
                    "topic": s.topic,
                    "prompt": s.prompt,
                    "response": ta,
                    "reference": s.reference,
                    "check": s.check,
                }
            )
    ctx.teacher.stats.setdefault("feedback", {}).update(
        {
            "judge": kind,
            "requests": len(seeds),
            "pairs": sum(1 for r in rows if "chosen" in r),
            "identical_or_empty": same,
            "student_preferred": sum(1 for tw in teacher_wins if not tw),
            "student_preferred_rate": sum(1 for tw in teacher_wins if not tw) / max(len(seeds), 1),
        }
    )
    return rows


def self_knowledge(ctx) -> list[dict]:
    e = ctx.cfg.elicit
    seeds = ctx.seeds
    sampler = _warm_student(ctx)
    sampling = Sampling(
        max_new_tokens=ctx.sampling.max_new_tokens, temperature=e.self_knowledge_temperature, top_p=0.95, seed=7
    )
    owners, outs = [], []
    for k in range(e.self_knowledge_samples):  # sample k of every seed: its own sampling seed, its own cache key
        outs += sampler.generate(
            "self_knowledge", [messages_for(s.prompt) for s in seeds], replace(sampling, seed=sampling.seed + k)
        )
        owners += [(s, k) for s in seeds]
    kind = judge_kind(ctx)
    keep = [False] * len(outs)
    by_ref = [i for i, (s, _) in enumerate(owners) if s.reference]
    for i in by_ref:
        keep[i] = verify(outs[i], owners[i][0].reference, owners[i][0].check)
    rest = [i for i in range(len(outs)) if not owners[i][0].reference and outs[i].strip()]
    teacher_says = {}  # seed id -> the teacher's own answer (a local teacher: served by the labeling cache)
    if kind == "likelihood":
        labels = label_prompts(ctx, [s.prompt for s in seeds], account="self_knowledge-teacher")
        teacher_says = dict(zip([s.id for s in seeds], labels, strict=True))
    if rest and kind == "likelihood":
        prompts = [owners[i][0].prompt for i in rest]
        own = _mean_logprobs(ctx, "self_knowledge", prompts, [teacher_says[owners[i][0].id] for i in rest])
        theirs = _mean_logprobs(ctx, "self_knowledge", prompts, [outs[i] for i in rest])
        for i, o, t in zip(rest, own, theirs, strict=True):
            keep[i] = t >= o - e.self_knowledge_margin
    elif rest:
        system = ctx.pack.teacher_system("feedback")
        verdicts = ctx.teacher.generate(
            "self_knowledge-judge",
            [messages_for(SINGLE_JUDGE.format(q=owners[i][0].prompt, a=outs[i]), system, wrap=False) for i in rest],
            Sampling(max_new_tokens=4),
        )
        for i, v in zip(rest, verdicts, strict=True):
            keep[i] = v.strip().lower().startswith("yes")
    rows, seen, same = [], set(), 0
    for i, (s, k) in enumerate(owners):
        if keep[i] and (s.id, outs[i].strip()) not in seen:
            seen.add((s.id, outs[i].strip()))
            same += s.id in teacher_says and outs[i].strip() == teacher_says[s.id].strip()
            rows.append(
                {
                    "id": f"self_knowledge-{s.id}-{k}",
                    "method": "self_knowledge",
                    "topic": s.topic,
                    "prompt": s.prompt,
                    "response": outs[i],
                    "reference": s.reference,
                    "check": s.check,
                }
            )
    passed = sum(keep)
    warmup = warmup_config(ctx.cfg, ctx.student.ref)  # what _warm_student trained the sampler with, if anything
    ctx.teacher.stats.setdefault("self_knowledge", {}).update(
        {
            "judge": kind,
            "samples": len(outs),
            "passed": passed,
            "repeated_samples": passed - len(rows),
            "kept": len(rows),
            "verified_by_reference": len(by_ref),
            "kept_same_as_teacher": same if kind == "likelihood" else None,  # word for word the teacher's answer
            "temperature": e.self_knowledge_temperature,
            "top_p": sampling.top_p,
            "samples_per_seed": e.self_knowledge_samples,
            "warmup_epochs": warmup.epochs if warmup is not None else 0,
            "sampler": sampler.ref,
            "filter_rate": 1 - passed / max(len(outs), 1),
        }
    )
    return rows


def warmup_config(cfg, student_ref: str):
    """The training config of the self-knowledge warm-up, or None when the student samples as it is."""
    epochs = cfg.elicit.self_knowledge_warmup_epochs
    if epochs == "auto":
        epochs = cfg.distill.train.epochs if untrained(student_ref) else 0
    if epochs <= 0:
        return None
    return cfg.distill.train.model_copy(update={"epochs": epochs, "max_steps": None, "lora": False})


def _warm_student(ctx):
    """The student after the warm-up's epochs of sft on the teacher's labels of the seeds."""
    tc = warmup_config(ctx.cfg, ctx.student.ref)
    if tc is None:
        return ctx.student
    prompts = [s.prompt for s in ctx.seeds]
    labels = label_prompts(ctx, prompts, account="self_knowledge-teacher")
    pairs = [(p, a) for p, a in zip(prompts, labels, strict=True) if a.strip()]
    key = content_hash(ctx.student.identity, ctx.teacher.identity, pairs, tc.model_dump(exclude={"fused"}))
    out = Path(ctx.home) / "students" / f"{ctx.pack.name}-self_knowledge-warmup-{key}"
    with locked(out):
        if read_done(out / "DONE") is None:
            model, tok = load_model(
                ctx.student.ref,
                dtype=ctx.cfg.models.dtype,
                device="cpu",
                trust_remote_code=ctx.cfg.models.trust_remote_code,
            )
            examples = [tokenize_example(tok, p, a, max_length=tc.max_length) for p, a in pairs]
            res = train(
                model,
                tok,
                examples,
                sft_step,
                cfg=tc,
                out_dir=out,
                seed=0,
                device=ctx.student.device,
                desc=f"{ctx.pack.name}: self_knowledge warm-up",
            )
            write_json(out / "DONE", {"model_dir": str(res.model_dir), "steps": res.steps, "epochs": tc.epochs})
    return CachedModel(str(out / "model"), ctx.cfg, ctx.home, device=ctx.student.device, backend_name="hf")
