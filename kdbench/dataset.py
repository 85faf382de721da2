"""From elicited rows to the distillation dataset on disk.

Filters, in order, each counted in the manifest: empty responses; exact
duplicates of (prompt, response); answers a generator can check and the teacher
got wrong; and rows that share an n-gram run with an evaluation item
(decontamination). What survives is saved with ``Dataset.save_to_disk`` beside
a manifest.json (counts, rates, hash), under a folder named by its content hash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kdbench.data import content_hash, read_done, read_jsonl, write_json, write_jsonl
from kdbench.locks import locked
from kdbench.packs import decontam
from kdbench.packs.generators import verify
from kdbench.topk import write_topk

COLUMNS = ["id", "method", "topic", "prompt", "response", "chosen", "rejected"]


@dataclass
class DatasetInfo:
    path: Path
    manifest: dict


def build_dataset(pack, rows_path: Path, home: Path, n: int = decontam.DEFAULT_N) -> DatasetInfo:
    rows = read_jsonl(rows_path)
    key = content_hash(pack.data_hash, content_hash(rows), n)
    out = Path(home) / "datasets" / f"{pack.name}-{key}"
    with locked(out):
        manifest = read_done(out / "manifest.json")
        info = DatasetInfo(out, manifest) if manifest is not None else _build(pack, rows, out, n)
        if "gold" not in info.manifest:  # a dataset built before gold rows existed gets them now
            info.manifest["gold"] = write_gold(pack, out, n)
            write_json(out / "manifest.json", info.manifest)
        return info


def write_gold(pack, out: Path, n: int = decontam.DEFAULT_N) -> dict:
    """The `gold` row's training data beside the dataset: each seed with a reference answer a person wrote
    (pack.gold_answers), decontaminated like the teacher's rows. Kept apart from the teacher's data (its
    hash is not the dataset's), so adding reference answers changes no other algorithm's result."""
    rows = [
        {"id": f"gold-{s.id}", "method": "gold", "topic": s.topic, "prompt": s.prompt, "response": answer}
        for s, answer in pack.gold_answers()
    ]
    report = decontam.check(((r["id"], f"{r['prompt']} {r['response']}") for r in rows), pack.eval_index(n))
    clean = [r for r in rows if r["id"] not in report.hits]
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "gold.jsonl", clean)
    return {
        "path": str(out / "gold.jsonl"),
        "rows": len(clean),
        "contaminated": len(rows) - len(clean),
        "hash": content_hash([(r["prompt"], r["response"]) for r in clean]),
    }


def _build(pack, rows: list[dict], out: Path, n: int) -> DatasetInfo:
    import datasets

    dropped = {"empty": 0, "duplicate": 0, "wrong_answer": 0, "contaminated": 0}
    seen, kept = set(), []
    for r in rows:
        if not (r.get("response") or r.get("chosen")):
            dropped["empty"] += 1
            continue
        sig = (r["prompt"], r.get("response"), r.get("chosen"), r.get("rejected"))
        if sig in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(sig)
        if r.get("reference") and r.get("response") and not verify(r["response"], r["reference"], r.get("check")):
            dropped["wrong_answer"] += 1
            continue
        kept.append(r)
    index = pack.eval_index(n)
    text = lambda r: " ".join(str(r.get(k) or "") for k in ("prompt", "response", "chosen"))  # noqa: E731
    report = decontam.check(((r["id"], text(r)) for r in kept), index)
    clean = [r for r in kept if r["id"] not in report.hits]
    dropped["contaminated"] = len(kept) - len(clean)

    table = {c: [r.get(c) or "" for r in clean] for c in COLUMNS}
    ds = datasets.Dataset.from_dict(table)
    out.mkdir(parents=True, exist_ok=True)
    ds.save_to_disk(str(out / "data"))
    by_method: dict[str, int] = {}
    for r in clean:
        by_method[r["method"]] = by_method.get(r["method"], 0) + 1
    manifest = {
        "pack": pack.name,
        "pack_version": pack.spec.version,
        "pack_data_hash": pack.data_hash,
        "data_hash": content_hash(
            [(r["prompt"], r.get("response"), r.get("chosen"), r.get("rejected")) for r in clean]
        ),
        "rows_in": len(rows),
        "rows": len(clean),
        "by_method": by_method,
        "dropped": dropped,
        "decontam_n": n,
        "decontam_rate": round(report.rate, 6),
        "contaminated_examples": dict(list(report.hits.items())[:20]),
    }
    write_json(out / "manifest.json", manifest)
    return DatasetInfo(out, manifest)


def load_examples(info: DatasetInfo) -> list[dict]:
    import datasets

    data = datasets.load_from_disk(str(info.path / "data"))
    assert isinstance(data, datasets.Dataset), f"{info.path / 'data'} holds a DatasetDict, not one dataset"
    return data.to_list()


def add_topk(info: DatasetInfo, teacher_ref: str, cfg, device: str = "cpu") -> DatasetInfo:
    """Attach the feature method's teacher top-k cache to the dataset (once; reused after)."""
    k, max_len = cfg.elicit.feature_topk, cfg.distill.train.max_length
    key = content_hash(teacher_ref, k, max_len)
    out = info.path / f"topk-{key}"
    with locked(out):
        if not (out / "manifest.json").exists():
            rows = [r for r in load_examples(info) if r["response"]]
            write_topk(rows, teacher_ref, out, k=k, max_length=max_len, cfg=cfg, device=device)
    manifest = {**info.manifest, "topk": {"path": str(out), **json.loads((out / "manifest.json").read_text())}}
    return DatasetInfo(info.path, manifest)
