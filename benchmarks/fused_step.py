"""One distillation training step on a real vocabulary: kdbench fused vs kdbench unfused vs TRL's GKD loss.

Teacher ``smollm2`` (SmolLM2-135M-Instruct, V = 49,152) and student
``pruned:smollm2:4`` (its 4-layer depth-pruned copy, 42.5M parameters), float32
on CPU. One forward + backward of a divergence on a batch of B x T token ids
(uniformly drawn, every position a target), three ways:

  fused    kdbench's step (kdbench.distill.divergence.make_step) with ctx.fused = True: both models
           return their final hidden states and the loss computes logits one chunk of positions at a
           time (kdbench.distill.fused), so no [B,T,V] tensor exists
  unfused  the same step with ctx.fused = False: both models' full [B,T,V] logits, then the chunked
           divergence of kdbench.distill.losses
  trl      TRL's ``GKDTrainer.compute_loss`` itself, called unbound on the two models (no Trainer is
           built: no accelerator, optimizer or data loader), then ``loss.backward()``: student and
           teacher full logits, shifted, into ``generalized_jsd_loss`` (fkl: beta = 0, jsd: beta = 0.5)

Memory: each (loss, side) in a fresh process; the models are loaded and the batch made, the
kernel's peak-RSS mark is reset (``/proc/self/clear_refs``), then one step runs; reported is
the peak RSS above the RSS just before the step (the student's parameter gradients included,
the optimizer's state not: it is the same on every side). Time: one process holds the models
and alternates the sides step by step (the order rotating between repetitions, after one
warm-up step each); reported are ratios within a repetition (median and range), never
absolute times, since the machine is shared.

``--search`` finds, by doubling then bisection over the batch size at fixed T, the largest
batch whose step keeps the process's whole peak RSS under ``--budget-gib`` (fused vs trl);
each probe is a fresh process that a watchdog ends as soon as its RSS passes the budget.

    python benchmarks/fused_step.py [--losses fkl,jsd] [--batch 4] [--seq 256] [--reps 5]
    python benchmarks/fused_step.py --search [--budget-gib 8] [--max-batch 64]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

TEACHER, STUDENT = "smollm2", "pruned:smollm2:4"
SIDES = ("fused", "unfused", "trl")
TRL_BETA = {"fkl": 0.0, "jsd": 0.5}  # TRL's generalized_jsd_loss: beta 0 is forward KL(p || q)


# ---- memory readings from the kernel ------------------------------------------------------------


def _status_mb(key: str) -> float:
    """VmRSS or VmHWM of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> None:
    """Set the peak-RSS mark (VmHWM) to the current RSS, so a later peak excludes model loading."""
    Path("/proc/self/clear_refs").write_text("5")


def _watchdog(budget_mb: float) -> None:
    """End the process (exit code 3) as soon as its RSS passes budget_mb: a probe over budget stops there."""

    def watch():
        while True:
            if _status_mb("VmRSS") > budget_mb:
                print(json.dumps({"over_budget": True, "rss_mb": _status_mb("VmRSS")}), flush=True)
                os._exit(3)
            time.sleep(0.005)

    threading.Thread(target=watch, daemon=True).start()


# ---- the models, the batch and one step per side ------------------------------------------------


def load(home: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdbench.models.refs import resolve

    torch.manual_seed(0)
    teacher_dir, student_dir = resolve(TEACHER, Path(home)), resolve(STUDENT, Path(home))
    tok = AutoTokenizer.from_pretrained(student_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval().requires_grad_(False)
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).train()
    with torch.no_grad():  # weights in anonymous memory (from_pretrained may map the file, paged in on first use)
        for p in [*teacher.parameters(), *student.parameters()]:
            p.data = p.data.clone()
    return teacher, student, tok


def make_batch(batch: int, seq: int, vocab: int) -> dict:
    """input_ids drawn uniformly from the vocabulary (seed 0); every position attended and a target."""
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    ones = torch.ones(batch, seq, dtype=torch.bool)
    labels = ids.clone()
    return {"input_ids": ids, "attention_mask": ones.long(), "loss_mask": ones, "labels": labels}


def stepper(side: str, loss: str, teacher, student, tok):
    """A function batch -> None running one forward + backward of ``side`` (gradients left on the student)."""
    import torch

    if side == "trl":
        from types import SimpleNamespace

        from trl.experimental.gkd.gkd_trainer import GKDTrainer

        # what GKDTrainer.compute_loss reads from self: the teacher, beta and the (static) loss
        trainer = SimpleNamespace(
            teacher_model=teacher, beta=TRL_BETA[loss], generalized_jsd_loss=GKDTrainer.generalized_jsd_loss
        )

        def run(batch):
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
            GKDTrainer.compute_loss(trainer, student, inputs).backward()

        return run

    from kdbench.distill.divergence import DivergenceConfig, make_step
    from kdbench.training import StepContext

    ctx = StepContext(
        student=student,
        teacher=teacher,
        tokenizer=tok,
        hp=DivergenceConfig(),  # tau = 1, jsd beta = 0.5 (TRL's beta for jsd above)
        device=torch.device("cpu"),
        fused=side == "fused",
    )
    step = make_step(loss)

    def run(batch):
        value, _ = step(ctx, batch)
        value.backward()

    return run


# ---- workers (one per process) -------------------------------------------------------------------


def worker_memory(side: str, loss: str, batch: int, seq: int, home: str, budget_mb: float | None) -> dict:
    teacher, student, tok = load(home)
    data = make_batch(batch, seq, student.config.vocab_size)
    run = stepper(side, loss, teacher, student, tok)
    gc.collect()
    if budget_mb:
        _watchdog(budget_mb)
    _reset_peak()
    base = _status_mb("VmRSS")
    t0 = time.perf_counter()
    run(data)
    seconds = time.perf_counter() - t0
    peak = _status_mb("VmHWM")
    return {"base_mb": base, "peak_mb": peak, "above_mb": peak - base, "seconds": seconds}


def worker_time(loss: str, batch: int, seq: int, reps: int, home: str, sides: list[str]) -> dict:
    teacher, student, tok = load(home)
    data = make_batch(batch, seq, student.config.vocab_size)
    runs = {s: stepper(s, loss, teacher, student, tok) for s in sides}

    def timed(side):
        student.zero_grad(set_to_none=True)
        gc.collect()
        t0 = time.perf_counter()
        runs[side](data)
        return time.perf_counter() - t0

    for s in sides:  # warm-up: first-call costs (thread pools, kernel selection) on no side's clock
        timed(s)
    out = {s: [] for s in sides}
    for r in range(reps):
        order = sides[r % len(sides) :] + sides[: r % len(sides)]  # each side goes first in turn
        for s in order:
            out[s].append(timed(s))
        print(json.dumps({"rep": r, **{s: out[s][-1] for s in sides}}), file=sys.stderr, flush=True)
    return out


# ---- the driver ----------------------------------------------------------------------------------


def _spawn(args: list[str]) -> tuple[int, dict]:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    if out.returncode not in (0, 3) or not lines:
        raise SystemExit(f"{args} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out.returncode, json.loads(lines[-1])


def memory(side: str, loss: str, batch: int, seq: int, home: str, budget_mb: float | None = None) -> dict:
    args = ["--mem-worker", side, loss, "--batch", str(batch), "--seq", str(seq), "--home", home]
    if budget_mb:
        args += ["--budget-mb", str(budget_mb)]
    code, res = _spawn(args)
    print(f"  [{side} {loss} B={batch} T={seq}] {res}", file=sys.stderr, flush=True)
    return res if code == 0 else {"over_budget": True, **res}


def _ratio_text(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f}× ({min(xs):.2f}–{max(xs):.2f})"


def main_step(a) -> None:
    losses = a.losses.split(",")
    print(
        f"teacher {TEACHER}, student {STUDENT}, V = 49,152, B = {a.batch}, T = {a.seq}, float32, CPU, "
        "one forward + backward"
    )
    print()
    print("Peak RSS above the pre-step RSS, MiB (a fresh process per cell):")
    print()
    print("| loss | fused | unfused | TRL | fused / unfused | fused / TRL |")
    print("|---|---|---|---|---|---|")
    for loss in filter(None, losses):
        m = {s: memory(s, loss, a.batch, a.seq, a.home)["above_mb"] for s in SIDES}
        print(
            f"| {loss} | {m['fused']:,.0f} | {m['unfused']:,.0f} | {m['trl']:,.0f} | "
            f"{m['fused'] / m['unfused']:.2f}× | {m['fused'] / m['trl']:.2f}× |",
            flush=True,
        )
    if a.reps <= 0:
        return
    print()
    print(f"Time ratios within each of {a.reps} repetitions (one process, sides alternating): median (min–max):")
    print()
    print("| loss | fused / unfused | fused / TRL |")
    print("|---|---|---|")
    for loss in a.time_losses.split(","):
        _, t = _spawn(
            ["--time-worker", loss, "--batch", str(a.batch), "--seq", str(a.seq), "--reps", str(a.reps)]
            + ["--home", a.home]
        )
        print(f"  [{loss} seconds per repetition] {json.dumps(t)}", file=sys.stderr, flush=True)
        fu = [f / u for f, u in zip(t["fused"], t["unfused"], strict=True)]
        ft = [f / r for f, r in zip(t["fused"], t["trl"], strict=True)]
        print(f"| {loss} | {_ratio_text(fu)} | {_ratio_text(ft)} |", flush=True)


def largest_batch(side: str, loss: str, seq: int, home: str, budget_mb: float, cap: int) -> tuple[int, dict]:
    """(largest batch <= cap whose step peaks under budget_mb, {batch: peak MiB or None when over})."""
    seen: dict[int, float | None] = {}

    def fits(b: int) -> bool:
        r = memory(side, loss, b, seq, home, budget_mb)
        seen[b] = None if r.get("over_budget") else r["peak_mb"]
        return seen[b] is not None

    lo, hi, b = 0, None, 1
    while b <= cap:  # doubling: 1, 2, 4, ... until a batch does not fit
        if not fits(b):
            hi = b
            break
        lo, b = b, b * 2
    if hi is None:
        if lo < cap and fits(cap):
            lo = cap
        elif lo < cap:
            hi = cap
    while hi is not None and hi - lo > 1:  # bisection between the last fit and the first miss
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, seen


def main_search(a) -> None:
    budget_mb = a.budget_gib * 1024
    print(
        f"Largest batch at T = {a.seq} whose one {a.search_loss} forward + backward keeps the whole process's "
        f"peak RSS under {a.budget_gib:g} GiB (models included), searched up to {a.max_batch}:"
    )
    print()
    print("| side | largest batch | tokens (batch × T) | its peak RSS GiB | probes (batch: peak GiB, or over) |")
    print("|---|---|---|---|---|")
    for side in a.search_sides.split(","):
        best, seen = largest_batch(side, a.search_loss, a.seq, a.home, budget_mb, a.max_batch)
        probes = ", ".join(f"{b}: {'over' if p is None else f'{p / 1024:.2f}'}" for b, p in sorted(seen.items()))
        peak = seen.get(best)
        print(
            f"| {side} | {best}{' (the cap)' if best == a.max_batch else ''} | {best * a.seq:,} | "
            f"{'-' if peak is None else f'{peak / 1024:.2f}'} | {probes} |",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--losses", default="fkl,jsd", help="losses whose memory is measured")
    ap.add_argument("--time-losses", default="fkl", help="losses whose time ratios are measured")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per side (0: memory only)")
    ap.add_argument("--home", default=".kdbench/bench-models")
    ap.add_argument("--search", action="store_true", help="the largest batch under --budget-gib instead")
    ap.add_argument("--search-sides", default="fused,trl")
    ap.add_argument("--search-loss", default="fkl")
    ap.add_argument("--budget-gib", type=float, default=8.0)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--mem-worker", nargs=2, metavar=("SIDE", "LOSS"))
    ap.add_argument("--time-worker", metavar="LOSS")
    ap.add_argument("--budget-mb", type=float)
    a = ap.parse_args()
    if a.mem_worker or a.time_worker:
        from kdbench.config import threads_within_affinity

        threads_within_affinity()  # torch's threads within the CPUs this worker may use
    if a.mem_worker:
        print(json.dumps(worker_memory(*a.mem_worker, a.batch, a.seq, a.home, a.budget_mb)))
        return
    if a.time_worker:
        print(json.dumps(worker_time(a.time_worker, a.batch, a.seq, a.reps, a.home, list(SIDES))))
        return
    from kdbench.models.refs import resolve

    resolve(STUDENT, Path(a.home))  # convert and prune once, before anything is measured
    main_search(a) if a.search else main_step(a)


if __name__ == "__main__":
    main()
