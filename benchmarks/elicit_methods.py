"""What each elicitation method yields on each pack with the default local teacher:
rows produced, filter rates, the rows that survive into the dataset of all methods
together, and the dataset each method makes alone (its rows through the same filters).

    python benchmarks/elicit_methods.py [--packs law,medicine,finance,science] [--home .kdbench]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
METHODS = ["labeling", "expansion", "curation", "feedback", "self_knowledge"]


def main() -> None:
    from kdbench.config import load_config
    from kdbench.data import write_jsonl
    from kdbench.dataset import add_topk, build_dataset
    from kdbench.elicit import elicit, load_rows
    from kdbench.models.tiny import build_tiny_models
    from kdbench.packs import load_pack

    ap = argparse.ArgumentParser()
    ap.add_argument("--packs", default="law,medicine,finance,science")
    ap.add_argument("--home", default=".kdbench")
    a = ap.parse_args()
    print("| pack | method | requests | rows | filtered out | filter rate | in dataset | dataset alone |")
    print("|---|---|---|---|---|---|---|---|")
    for name in a.packs.split(","):
        cfg = load_config(overrides={"pack": name, "home": a.home, "elicit": {"methods": METHODS + ["feature"]}})
        pack = load_pack(name)
        m = build_tiny_models(pack, cfg.tiny, cfg.home_path)
        res = elicit(pack, m.teacher, cfg, cfg.home_path, student_ref=m.student, methods=METHODS)
        info = add_topk(build_dataset(pack, res.path, cfg.home_path), m.teacher, cfg)
        man, st = info.manifest, res.stats["methods"]
        rows = load_rows(res)
        for meth in METHODS:
            s = st.get(meth, {})
            if meth in ("expansion", "curation"):
                req, n, out = s.get("drafts", 0), s.get("kept", 0), s.get("drafts", 0) - s.get("kept", 0)
                why = f"{s.get('near_duplicate', 0)} near-dup, {s.get('leaked', 0)} leaked, {s.get('empty', 0)} empty"
            elif meth == "feedback":
                req, n = s.get("requests", 0), s.get("pairs", 0)
                out = s.get("identical_or_empty", 0)
                why = f"{out} identical/empty; student preferred {s.get('student_preferred', 0)}"
            elif meth == "self_knowledge":
                req, n = s.get("samples", 0), s.get("kept", 0)
                out = req - s.get("passed", n)
                why = (
                    f"judge: {s.get('judge')}, {s.get('verified_by_reference', 0)} checked by reference; "
                    f"{s.get('repeated_samples', 0)} repeats of a kept sample; {s.get('kept_same_as_teacher')} "
                    f"kept rows word for word the teacher's answer; warm-up {s.get('warmup_epochs')} epochs"
                )
            else:
                req, n, out, why = len(pack.seeds), s.get("rows", 0), 0, ""  # one request per seed
            alone = cfg.home_path / "bench-rows" / f"{name}-{meth}.jsonl"
            write_jsonl(alone, [r for r in rows if r["method"] == meth])
            solo = build_dataset(pack, alone, cfg.home_path).manifest["rows"]
            print(
                f"| {name} | {meth} | {req} | {n} | {out} ({why}) | {out / max(req, 1):.0%} | "
                f"{man['by_method'].get(meth, 0)} | {solo} |",
                flush=True,
            )
        t = man["topk"]
        print(
            f"| {name} | feature | {man['rows']} rows | {t['tokens']:,} tokens | – | – | "
            f"top-{t['k']}, {t['bytes_per_token']} B/token | – |"
        )
        print(
            f"| {name} | dataset | {man['rows_in']} in | {man['rows']} kept | {man['dropped']} | "
            f"{1 - man['rows'] / max(man['rows_in'], 1):.0%} | decontamination rate {man['decontam_rate']:.2%} | – |"
        )


if __name__ == "__main__":
    main()
