"""Training throughput: kdbench's fkl and gkd against TRL's trainers, side by side.

Same tiny teacher and student (the embedded law default), same data (its
elicited dataset), same batch size, optimizer steps, learning rate, sequence
budget and, for on-policy training, the same number of new tokens. Each
configuration runs in its own process, kdbench and TRL alternating (each going
first in turn), and the wall time of the training loop alone is measured (set-up
excluded). Tokens/s = steps x batch x mean tokens per example (the same
numerator for both sides), so the ratio is a pure speed ratio; the speed-up is
the median of the per-pair ratios (TRL time / kdbench time of back-to-back
runs), with their range, since the shared machine's speed swings between pairs.

Pairs:
  fkl        kdbench fkl            vs  trl.experimental GKDTrainer(lmbda=0, beta=0)   off-policy forward KL
  gkd        kdbench gkd(0.5, 0.5)  vs  trl.experimental GKDTrainer(lmbda=0.5, beta=0.5)
  on-policy  kdbench gkd(1.0, 0.5)  vs  trl.DistillationTrainer(beta=0.5)               every batch generated

    python benchmarks/train_throughput.py [--steps 30] [--batch 16] [--repeats 5] [--home .kdbench]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
NEW_TOKENS = 32
LR = 3e-3


def fixture(home: str):
    """The law pack's tiny models and elicited rows (built and cached by kdbench if missing)."""
    from kdbench.config import load_config
    from kdbench.dataset import build_dataset, load_examples
    from kdbench.elicit import elicit
    from kdbench.models.tiny import build_tiny_models
    from kdbench.packs import load_pack

    cfg = load_config(overrides={"pack": "law", "home": home})
    pack = load_pack("law")
    m = build_tiny_models(pack, cfg.tiny, cfg.home_path)
    rows = load_examples(build_dataset(pack, elicit(pack, m.teacher, cfg, cfg.home_path).path, cfg.home_path))
    return cfg, m, [r for r in rows if r["response"]]


def run_kdbench(algo: str, hp: dict, steps: int, batch: int, home: str) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdbench.config import TrainConfig
    from kdbench.data import tokenize_example
    from kdbench.distill.registry import ALGORITHMS
    from kdbench.training import train

    cfg, m, rows = fixture(home)
    tok = AutoTokenizer.from_pretrained(m.student)
    student = AutoModelForCausalLM.from_pretrained(m.student)
    teacher = AutoModelForCausalLM.from_pretrained(m.teacher)
    examples = [tokenize_example(tok, r["prompt"], r["response"], max_length=192) for r in rows]
    a = ALGORITHMS[algo]
    tc = TrainConfig(max_steps=steps, batch_size=batch, lr=LR, save_every=0, log_every=10**9, warmup_ratio=0.0)
    with tempfile.TemporaryDirectory() as out:
        res = train(
            student,
            tok,
            examples,
            a.step,
            cfg=tc,
            out_dir=Path(out),
            seed=0,
            teacher=teacher,
            hp=a.config.model_validate(hp),
            desc=f"kdbench {algo}",
        )
    return res.seconds


def _messages(rows):
    from kdbench.data import QUESTION_TEMPLATE

    return [
        {
            "messages": [
                {"role": "user", "content": QUESTION_TEMPLATE.format(prompt=r["prompt"])},
                {"role": "assistant", "content": r["response"]},
            ]
        }
        for r in rows
    ]


class _Clock:
    """A TrainerCallback measuring the training loop alone."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class CB(TrainerCallback):
            def on_train_begin(self, *a, **k):
                clock.t0 = time.perf_counter()

            def on_train_end(self, *a, **k):
                clock.seconds = time.perf_counter() - clock.t0

        self.callback = CB()


def run_trl_gkd(lmbda: float, beta: float, steps: int, batch: int, home: str) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    cfg, m, rows = fixture(home)
    tok = AutoTokenizer.from_pretrained(m.student)
    clock = _Clock()
    with tempfile.TemporaryDirectory() as out:
        args = GKDConfig(
            output_dir=out,
            per_device_train_batch_size=batch,
            max_steps=steps,
            learning_rate=LR,
            lmbda=lmbda,
            beta=beta,
            max_new_tokens=NEW_TOKENS,
            temperature=1.0,
            max_length=192,
            logging_steps=10**6,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            dataloader_num_workers=0,
            lr_scheduler_type="cosine",
            warmup_steps=0,
            seed=0,
        )
        trainer = GKDTrainer(
            model=AutoModelForCausalLM.from_pretrained(m.student),
            teacher_model=AutoModelForCausalLM.from_pretrained(m.teacher),
            args=args,
            train_dataset=Dataset.from_list(_messages(rows)),
            processing_class=tok,
            callbacks=[clock.callback],
        )
        trainer.train()
    return clock.seconds


def run_trl_distillation(beta: float, steps: int, batch: int, home: str) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DistillationConfig, DistillationTrainer

    from kdbench.data import QUESTION_TEMPLATE

    cfg, m, rows = fixture(home)
    tok = AutoTokenizer.from_pretrained(m.student)
    clock = _Clock()
    data = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": QUESTION_TEMPLATE.format(prompt=r["prompt"])}]} for r in rows]
    )
    with tempfile.TemporaryDirectory() as out:
        args = DistillationConfig(
            output_dir=out,
            per_device_train_batch_size=batch,
            max_steps=steps,
            learning_rate=LR,
            beta=beta,
            max_completion_length=NEW_TOKENS,
            temperature=1.0,
            logging_steps=10**6,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            dataloader_num_workers=0,
            lr_scheduler_type="cosine",
            warmup_steps=0,
            seed=0,
        )
        trainer = DistillationTrainer(
            model=AutoModelForCausalLM.from_pretrained(m.student),
            teacher_model=AutoModelForCausalLM.from_pretrained(m.teacher),
            args=args,
            train_dataset=data,
            processing_class=tok,
            callbacks=[clock.callback],
        )
        trainer.train()
    return clock.seconds


PAIRS = {
    "fkl": (("kdbench", "fkl", {}), ("trl-gkd", 0.0, 0.0)),
    "gkd": (("kdbench", "gkd", {"lmbda": 0.5, "beta": 0.5, "max_new_tokens": NEW_TOKENS}), ("trl-gkd", 0.5, 0.5)),
    "on-policy": (
        ("kdbench", "gkd", {"lmbda": 1.0, "beta": 0.5, "max_new_tokens": NEW_TOKENS}),
        ("trl-distillation", 0.5),
    ),
}


def worker(spec: list, steps: int, batch: int, home: str) -> float:
    kind = spec[0]
    if kind == "kdbench":
        return run_kdbench(spec[1], spec[2], steps, batch, home)
    if kind == "trl-gkd":
        return run_trl_gkd(spec[1], spec[2], steps, batch, home)
    return run_trl_distillation(spec[1], steps, batch, home)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5, help="alternating pairs per configuration")
    ap.add_argument("--home", default=".kdbench")
    ap.add_argument("--pairs", default=",".join(PAIRS))
    ap.add_argument("--worker")
    a = ap.parse_args()
    if a.worker:
        from kdbench.config import threads_within_affinity

        threads_within_affinity()  # torch's threads within the CPUs this worker may use
        print(json.dumps({"seconds": worker(json.loads(a.worker), a.steps, a.batch, a.home)}))
        return
    from transformers import AutoTokenizer

    from kdbench.data import tokenize_example

    _, m, rows = fixture(a.home)  # build once, before anything is timed
    tok = AutoTokenizer.from_pretrained(m.student)
    mean_tokens = statistics.mean(
        len(tokenize_example(tok, r["prompt"], r["response"], max_length=192)["input_ids"]) for r in rows
    )
    tokens = a.steps * a.batch * mean_tokens
    print(
        f"law tiny teacher/student, {len(rows)} examples, {a.steps} steps x batch {a.batch}, "
        f"{mean_tokens:.1f} tokens/example, {NEW_TOKENS} new tokens on-policy; {a.repeats} alternating pairs"
    )
    print("| pair | kdbench tokens/s (median) | TRL tokens/s (median) | speed-up: median of pairs (min–max) |")
    print("|---|---|---|---|")
    for name in a.pairs.split(","):
        times = {"kdbench": [], "trl": []}
        for r in range(a.repeats):
            sides = list(zip(("kdbench", "trl"), PAIRS[name], strict=True))
            for side, spec in sides if r % 2 == 0 else sides[::-1]:  # each side goes first in turn
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        json.dumps(spec),
                        "--steps",
                        str(a.steps),
                        "--batch",
                        str(a.batch),
                        "--home",
                        a.home,
                    ],
                    capture_output=True,
                    text=True,
                )
                if out.returncode:
                    raise SystemExit(f"{name}/{side} failed:\n{out.stderr[-3000:]}")
                times[side].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
            print(
                f"  {name} pair {r}: kdbench {times['kdbench'][-1]:.2f} s, TRL {times['trl'][-1]:.2f} s",
                file=sys.stderr,
            )
        k, t = statistics.median(times["kdbench"]), statistics.median(times["trl"])
        ups = [tt / kk for kk, tt in zip(times["kdbench"], times["trl"], strict=True)]
        print(
            f"| {name} | {tokens / k:,.0f} | {tokens / t:,.0f} | "
            f"{statistics.median(ups):.2f}× ({min(ups):.2f}–{max(ups):.2f}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
