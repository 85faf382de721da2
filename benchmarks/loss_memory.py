"""Peak memory and time of kdbench's chunked divergences vs straightforward full-vocabulary ones.

Memory: each (loss, implementation) runs in a fresh process: inputs are
allocated, then one forward + backward measures the peak RSS above that point
(ru_maxrss). Time: per loss, one process holds the inputs and alternates the two
implementations repetition by repetition (each going first in turn, after one
warm-up call each), so both see the same machine load; reported is the median of
the per-repetition ratios kdbench / reference and their range, not absolute times
(they swing several-fold on the shared machine). The reference for fkl, rkl and jsd is TRL's
``generalized_jsd_loss`` (beta = 0, 1, 0.5); for tvd, skl and srkl it is the same
style written out (log-softmaxes and products over the whole vocabulary).

    python benchmarks/loss_memory.py            # B*T = 2048, V = 32000, float32
    python benchmarks/loss_memory.py --quick    # a small shape, for a smoke test
    python benchmarks/loss_memory.py --losses fkl --chunk 32   # kdbench at a chosen rows-per-chunk
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

LOSSES = ["fkl", "rkl", "jsd", "tvd", "skl", "srkl"]
IMPLS = ("kdbench", "reference")


def reference(name: str):
    import torch
    import torch.nn.functional as F

    def trl(beta):
        from trl.experimental.gkd.gkd_trainer import GKDTrainer

        def f(s, t, mask):
            per_tok = GKDTrainer.generalized_jsd_loss(s, t, beta=beta, reduction="none").sum(-1)
            return (per_tok * mask).sum() / mask.sum()

        return f

    def full(kind):
        def f(s, t, mask):
            ls, lt = F.log_softmax(s, -1), F.log_softmax(t, -1)
            p, q = lt.exp(), ls.exp()
            if kind == "tvd":
                d = 0.5 * (p - q).abs().sum(-1)
            elif kind == "skl":
                m = torch.logaddexp(lt + torch.log(torch.tensor(0.1)), ls + torch.log(torch.tensor(0.9)))
                d = (p * (lt - m)).sum(-1)
            else:  # srkl
                m = torch.logaddexp(ls + torch.log(torch.tensor(0.9)), lt + torch.log(torch.tensor(0.1)))
                d = (q * (ls - m)).sum(-1)
            return (d * mask).sum() / mask.sum()

        return f

    return {
        "fkl": trl(0.0),
        "rkl": trl(1.0),
        "jsd": trl(0.5),
        "tvd": full("tvd"),
        "skl": full("skl"),
        "srkl": full("srkl"),
    }[name]


def _inputs(bt: int, v: int):
    import torch

    torch.manual_seed(0)
    B = 8
    T = bt // B
    s = torch.randn(B, T, v, requires_grad=True)
    t = torch.randn(B, T, v)
    return s, t, torch.ones(B, T, dtype=torch.bool)


def _impl(name: str, impl: str, chunk: int | None = None):
    if impl == "kdbench":
        from functools import partial

        from kdbench.distill.losses import DIVERGENCES

        return partial(DIVERGENCES[name], chunk_size=chunk)
    return reference(name)


def worker(name: str, impl: str, bt: int, v: int, chunk: int | None) -> dict:
    """Peak RSS (MB) of one forward + backward above the RSS with the inputs allocated."""
    s, t, mask = _inputs(bt, v)
    fn = _impl(name, impl, chunk)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn(s, t, mask).backward()
    return {"peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}


def time_worker(name: str, bt: int, v: int, reps: int, chunk: int | None) -> dict:
    """Seconds of one forward + backward per implementation, alternating: {impl: [reps]}."""
    s, t, mask = _inputs(bt, v)
    fns = {impl: _impl(name, impl, chunk) for impl in IMPLS}

    def timed(impl):
        s.grad = None
        t0 = time.perf_counter()
        fns[impl](s, t, mask).backward()
        return time.perf_counter() - t0

    for impl in IMPLS:  # warm-up: first-call costs on no side's clock
        timed(impl)
    out = {impl: [] for impl in IMPLS}
    for r in range(reps):
        for impl in IMPLS if r % 2 == 0 else IMPLS[::-1]:  # each goes first in turn
            out[impl].append(timed(impl))
    return out


def _run(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bt", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--reps", type=int, default=5, help="alternating timed repetitions per implementation")
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--chunk", type=int, help="kdbench's rows per chunk (default: its own, sized by bytes)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", nargs=2, metavar=("LOSS", "IMPL"))
    ap.add_argument("--time-worker", metavar="LOSS")
    a = ap.parse_args()
    if a.quick:
        a.bt, a.vocab, a.reps = 256, 4000, 2
    if a.worker or a.time_worker:
        from kdbench.config import threads_within_affinity

        threads_within_affinity()  # torch's threads within the CPUs this worker may use
    if a.worker:
        print(json.dumps(worker(*a.worker, a.bt, a.vocab, a.chunk)))
        return
    if a.time_worker:
        print(json.dumps(time_worker(a.time_worker, a.bt, a.vocab, a.reps, a.chunk)))
        return
    shape = ["--bt", str(a.bt), "--vocab", str(a.vocab)] + (["--chunk", str(a.chunk)] if a.chunk else [])
    print(
        f"B*T = {a.bt}, V = {a.vocab}, float32, forward + backward; time: {a.reps} alternating repetitions, "
        "median (min-max) of the ratios kdbench / reference"
    )
    print("| loss | reference peak MB | kdbench peak MB | memory ratio | time ratio |")
    print("|---|---|---|---|---|")
    for name in a.losses.split(","):
        mem = {impl: _run(["--worker", name, impl, *shape])["peak_mb"] for impl in ("reference", "kdbench")}
        t = _run(["--time-worker", name, "--reps", str(a.reps), *shape])
        ratios = [k / r for k, r in zip(t["kdbench"], t["reference"], strict=True)]
        print(f"  {name} seconds: {json.dumps(t)}", file=sys.stderr, flush=True)
        print(
            f"| {name} | {mem['reference']:.0f} | {mem['kdbench']:.0f} | {mem['kdbench'] / mem['reference']:.2f} | "
            f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
