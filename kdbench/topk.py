"""feature: the teacher's top-k next-token log-probabilities, cached on disk.

For every response token of the distillation dataset the teacher's k most
likely next tokens are stored as ids (uint16 when the vocabulary fits, else
int32) and log-probabilities (float16): 256 bytes per token at k = 64 with a
vocabulary under 65,536. The white-box divergences then train without the
teacher in memory; the loss accounts for the probability mass outside the top k
(see distill/losses.py). Rows are tokenized exactly as training tokenizes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from kdbench.data import collate, pad_id, tokenize_example
from kdbench.models.loading import load_model


@torch.inference_mode()
def write_topk(
    rows: list[dict],
    teacher_ref: str,
    out: Path,
    *,
    k: int,
    max_length: int,
    cfg,
    device: str = "cpu",
    batch_size: int = 16,
) -> dict:
    """Compute and store the top-k cache for ``rows`` (dicts with id, prompt, response) under ``out``."""
    model, tok = load_model(
        teacher_ref,
        revision=cfg.models.revision,
        dtype=cfg.models.dtype,
        device=device,
        trust_remote_code=cfg.models.trust_remote_code,
    )
    model.eval()
    vocab = len(tok)
    id_dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.int32
    examples = [tokenize_example(tok, r["prompt"], r["response"], max_length=max_length) for r in rows]
    # position t predicts token t+1: keep positions whose next token is a response token
    positions = [[t for t in range(len(e["input_ids"]) - 1) if e["loss_mask"][t + 1]] for e in examples]
    total = sum(len(p) for p in positions)
    out.mkdir(parents=True, exist_ok=True)
    ids_mm = np.lib.format.open_memmap(out / "ids.npy", mode="w+", dtype=id_dtype, shape=(total, k))
    lp_mm = np.lib.format.open_memmap(out / "logprobs.npy", mode="w+", dtype=np.float16, shape=(total, k))
    index, offset = {}, 0
    pad = pad_id(tok)
    for start in tqdm(
        range(0, len(examples), batch_size), desc="feature: teacher top-k", dynamic_ncols=True, mininterval=1.0
    ):
        part = examples[start : start + batch_size]
        b = {kk: v.to(device) for kk, v in collate(part, pad).items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
        lp = torch.log_softmax(logits, -1)
        vals, idx = lp.topk(k, dim=-1)
        for j, _e in enumerate(part):
            pos = positions[start + j]
            n = len(pos)
            ids_mm[offset : offset + n] = idx[j, pos].cpu().numpy().astype(id_dtype)
            lp_mm[offset : offset + n] = vals[j, pos].cpu().numpy().astype(np.float16)
            index[rows[start + j]["id"]] = [offset, n]
            offset += n
    ids_mm.flush()
    lp_mm.flush()
    bytes_per_token = (np.dtype(id_dtype).itemsize + 2) * k
    manifest = {
        "k": k,
        "tokens": total,
        "vocab": vocab,
        "id_dtype": np.dtype(id_dtype).name,
        "bytes_per_token": bytes_per_token,
        "temperature": 1.0,
        "max_length": max_length,
        "teacher": teacher_ref,
    }
    (out / "index.json").write_text(json.dumps(index))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


class TopKCache:
    """Read side: attach cached teacher top-k to tokenized examples."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.manifest = json.loads((self.path / "manifest.json").read_text())
        self.index = json.loads((self.path / "index.json").read_text())
        self.ids = np.load(self.path / "ids.npy", mmap_mode="r")
        self.logprobs = np.load(self.path / "logprobs.npy", mmap_mode="r")

    def attach(self, row_id: str, example: dict) -> dict | None:
        """example + teacher_topk_ids/_logprobs [T,k] aligned with input_ids; None if the row is not cached."""
        if row_id not in self.index:
            return None
        offset, n = self.index[row_id]
        T, k = len(example["input_ids"]), self.manifest["k"]
        pos = [t for t in range(T - 1) if example["loss_mask"][t + 1]]
        if len(pos) != n:  # tokenized differently from when the cache was written
            return None
        ids = np.zeros((T, k), dtype=np.int64)
        lps = np.zeros((T, k), dtype=np.float32)
        ids[pos] = self.ids[offset : offset + n]
        lps[pos] = self.logprobs[offset : offset + n]
        return {**example, "teacher_topk_ids": ids, "teacher_topk_logprobs": lps}
