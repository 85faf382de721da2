"""Hooks that pack task YAMLs reference through their eval/utils.py.

``make_loader`` reads a pack's JSONL relative to the pack's eval folder, so
``lm_eval --include_path domains/law/eval`` works from any working directory.
``process_generation`` scores generations with exact match and ROUGE-L using
the ``rouge_score`` package directly: lm-eval's ``metric: rouge`` would call
``evaluate.load`` and fail offline after all generation has run.
"""

from __future__ import annotations

import json
import re
import string
from functools import lru_cache
from pathlib import Path

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def make_loader(eval_dir: Path):
    """A ``custom_dataset`` callable bound to one eval folder."""

    def load(data_file: str, **_ignored):
        import datasets

        path = (Path(eval_dir) / data_file).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: task data not found (dataset_kwargs.data_file in the task YAML)")
        with path.open(encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        for r in rows:  # one schema for every row so Arrow does not guess
            r.setdefault("aliases", [])
            r.setdefault("fact", None)
        return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})

    return load


def normalize(text: str) -> str:
    """SQuAD-style: lower-case, drop punctuation and articles, squeeze spaces."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    return _scorer().score(reference, prediction)["rougeL"].fmeasure


def process_generation(doc: dict, results: list[str]) -> dict[str, float]:
    """exact_match and rougeL of the first line of the generation, best over answer + aliases."""
    pred = (results[0] if results else "").strip().split("\n")[0]
    refs = [doc["answer"], *(doc.get("aliases") or [])]
    return {
        "exact_match": float(any(normalize(pred) == normalize(r) for r in refs)),
        "rougeL": max(rouge_l(pred, r) for r in refs),
    }
