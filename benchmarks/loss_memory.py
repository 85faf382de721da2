"""Peak memory and time of kdbench's chunked divergences vs straightforward full-vocabulary ones.

Each (loss, implementation) runs in a fresh process: inputs are allocated, then
one forward + backward measures the peak RSS above that point (ru_maxrss), then
further repetitions give the median time. kdbench and reference alternate, so
both see the same machine load. The reference for fkl, rkl and jsd is TRL's
``generalized_jsd_loss`` (beta = 0, 1, 0.5); for tvd, skl and srkl it is the same
style written out (log-softmaxes and products over the whole vocabulary).

    python benchmarks/loss_memory.py            # B*T = 2048, V = 32000, float32
    python benchmarks/loss_memory.py --quick    # a small shape, for a smoke test
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


def worker(name: str, impl: str, bt: int, v: int, reps: int) -> dict:
    import torch

    torch.manual_seed(0)
    B = 8
    T = bt // B
    s = torch.randn(B, T, v, requires_grad=True)
    t = torch.randn(B, T, v)
    mask = torch.ones(B, T, dtype=torch.bool)
    if impl == "kdbench":
        from kdbench.distill.losses import DIVERGENCES

        fn = DIVERGENCES[name]
    else:
        fn = reference(name)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    fn(s, t, mask).backward()
    first = time.perf_counter() - t0
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    times = [first]
    for _ in range(reps - 1):
        s.grad = None
        t0 = time.perf_counter()
        fn(s, t, mask).backward()
        times.append(time.perf_counter() - t0)
    return {"peak_mb": peak_mb, "seconds": statistics.median(times)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bt", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", nargs=2, metavar=("LOSS", "IMPL"))
    a = ap.parse_args()
    if a.quick:
        a.bt, a.vocab, a.reps = 256, 4000, 2
    if a.worker:
        print(json.dumps(worker(*a.worker, a.bt, a.vocab, a.reps)))
        return
    rows = []
    print(f"B*T = {a.bt}, V = {a.vocab}, float32, forward + backward, median of {a.reps}")
    print("| loss | reference peak MB | kdbench peak MB | memory ratio | reference s | kdbench s | time ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in LOSSES:
        got = {}
        for impl in ("reference", "kdbench"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    name,
                    impl,
                    "--bt",
                    str(a.bt),
                    "--vocab",
                    str(a.vocab),
                    "--reps",
                    str(a.reps),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            got[impl] = json.loads(out.stdout.strip().splitlines()[-1])
        r, k = got["reference"], got["kdbench"]
        rows.append({"loss": name, **{f"ref_{x}": y for x, y in r.items()}, **{f"kd_{x}": y for x, y in k.items()}})
        print(
            f"| {name} | {r['peak_mb']:.0f} | {k['peak_mb']:.0f} | {k['peak_mb'] / r['peak_mb']:.2f} | "
            f"{r['seconds']:.3f} | {k['seconds']:.3f} | {k['seconds'] / r['seconds']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
