"""The feature method's top-k cache: bytes per token, and the score of fkl trained
from it against fkl trained on the teacher's dense logits.

Same tiny law teacher, student, data and training recipe as the default run; the
only difference is where the teacher's distribution comes from. Scores are the
law multiple-choice accuracy (lm-eval), mean over seeds.

    python benchmarks/topk_cache.py [--k 64] [--seeds 0,1] [--home .kdbench]
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    from kdbench.config import load_config
    from kdbench.dataset import add_topk, build_dataset
    from kdbench.distill.run import distill
    from kdbench.elicit import elicit
    from kdbench.evaluate import evaluate
    from kdbench.models.tiny import build_tiny_models
    from kdbench.packs import load_pack

    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--home", default=".kdbench")
    ap.add_argument("--pack", default="law")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    cfg = load_config(overrides={"pack": a.pack, "home": a.home, "elicit": {"feature_topk": a.k}})
    pack = load_pack(a.pack)
    m = build_tiny_models(pack, cfg.tiny, cfg.home_path)
    info = build_dataset(pack, elicit(pack, m.teacher, cfg, cfg.home_path).path, cfg.home_path)
    info = add_topk(info, m.teacher, cfg)
    task = pack.task_names[0]
    scores = {}
    for mode in ("online", "topk"):
        c = cfg.model_copy(deep=True)
        c.distill.teacher_logits = mode
        scores[mode] = []
        for seed in seeds:
            res = distill("fkl", seed, m.teacher, m.student, info, c, cfg.home_path)
            scores[mode].append(evaluate(res.model_dir, pack, c, cfg.home_path).metrics[task]["acc"])
    t = info.manifest["topk"]
    dense_bytes = 4 * t["vocab"]
    print(f"{a.pack}: k = {t['k']}, vocabulary {t['vocab']}, {t['tokens']:,} response tokens cached")
    print("| teacher logits | bytes/token | fkl " + task + " acc (mean over seeds " + a.seeds + ") |")
    print("|---|---|---|")
    print(
        f"| dense (teacher in memory) | {dense_bytes:,} (float32 row) | "
        f"{100 * statistics.mean(scores['online']):.1f} ({', '.join(f'{100 * s:.1f}' for s in scores['online'])}) |"
    )
    print(
        f"| top-{t['k']} cache | {t['bytes_per_token']} | {100 * statistics.mean(scores['topk']):.1f} "
        f"({', '.join(f'{100 * s:.1f}' for s in scores['topk'])}) |"
    )
    diff = 100 * (statistics.mean(scores["topk"]) - statistics.mean(scores["online"]))
    print(f"difference: {diff:+.1f} points")


if __name__ == "__main__":
    main()
