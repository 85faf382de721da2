"""Load a model reference (a Hugging Face hub id or a local path) the standard way."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import torch

from kdbench.errors import KdbenchError, UserError

# Prefect runs a flow's tasks in threads of one process, and transformers makes a model by patching torch's init
# functions and PreTrainedModel.init_weights module-wide for the duration (initialization.no_init_weights): two
# threads making models at once can leave a loaded model re-initialised. Seen here: the finance teacher, evaluated
# by lm-eval while students were being loaded, scored 16.9 on finance_mc and wrote gibberish; alone, 76.5.
# Every model kdbench makes or loads, and every lm-eval evaluation (it loads its model inside), holds this lock.
MODEL_LOCK = threading.RLock()

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def load_tokenizer(ref: str, *, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(ref, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise _not_found(ref, e) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    ref: str,
    *,
    revision: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
):
    """(model, tokenizer) through AutoModelForCausalLM.from_pretrained, as for any hub model."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(ref, revision=revision, trust_remote_code=trust_remote_code)
    try:
        with MODEL_LOCK:
            model = AutoModelForCausalLM.from_pretrained(
                ref, revision=revision, dtype=_DTYPES[dtype], trust_remote_code=trust_remote_code
            )
    except OSError as e:
        raise _not_found(ref, e) from None
    # transformers declares .to through functools.wraps(nn.Module.to), which hides the bound self from pyright
    return model.to(device), tok  # pyright: ignore[reportArgumentType]


def _not_found(ref: str, e: Exception) -> KdbenchError:
    hint = (
        " This machine is offline (HF_HUB_OFFLINE=1): use a local path, the embedded default `tiny`, or `smollm2`"
        " (a real instruct model from a PyPI package; see kdbench/models/refs.py)."
        if offline() or not Path(ref).exists()
        else ""
    )
    return UserError(f"could not load model {ref!r}: {str(e).splitlines()[0]}.{hint}")


def identity(ref: str, revision: str | None = None) -> dict:
    """What identifies a model for caching: the fingerprint kdbench wrote in a folder it made (the same model
    built in two homes is one), else its reference, revision and, for a local folder, its weights' mtimes."""
    p = Path(ref)
    out = {"ref": ref, "revision": revision}
    if p.is_dir():
        card = p / "kdbench.json"
        fingerprint = json.loads(card.read_text()).get("fingerprint") if card.exists() else None
        if fingerprint:  # a model kdbench made is what made it, wherever its folder is (each worker has a home)
            return {"fingerprint": fingerprint, "revision": revision}
        if card.exists():
            out["fingerprint"] = None
        else:
            out["mtimes"] = sorted((f.name, f.stat().st_mtime_ns) for f in p.glob("*.safetensors"))
    return out


def untrained(ref: str) -> bool:
    """True for the embedded tiny student as built: randomly initialised, never trained (its card says role
    student; students kdbench trains are saved without a card)."""
    card = Path(ref) / "kdbench.json"
    return card.exists() and json.loads(card.read_text()).get("role") == "student"
