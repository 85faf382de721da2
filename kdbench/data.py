"""Prompts, tokenized training examples, and the distillation dataset on disk.

A training example is a (prompt, response) pair. The prompt is wrapped in the
"Question: ...\nAnswer:" format of the pack eval tasks and rendered with the
model's chat template when the tokenizer has one (else used as plain text); the
tokens are the ones the template writes for the whole exchange, with a loss
mask over the response and its closing eos only. The dataset on disk keeps text
(not ids) so students with different tokenizers can share it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch

from kdbench.log import get_logger

log = get_logger(__name__)

# The same wording as the pack eval tasks' doc_to_text (evals/templates), so a
# model is trained and evaluated on one prompt format.
QUESTION_TEMPLATE = "Question: {prompt}\nAnswer:"


def messages_for(prompt: str, system: str | None = None, *, wrap: bool = True) -> list[dict[str, str]]:
    """Chat messages for one request: an optional system turn and one user turn."""
    user = QUESTION_TEMPLATE.format(prompt=prompt) if wrap else prompt
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def render_messages(tokenizer, messages: list[dict[str, str]]) -> str:
    """Messages as model input text: the chat template, or system and user text joined."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages)


def pad_id(tokenizer) -> int:
    """The id a batch is padded with: the pad token, else eos."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of model input text, the way lm-eval and the backends encode it.

    The tokenizer's own special tokens are added (a Llama-2-style tokenizer
    prepends BOS, most chat tokenizers add nothing), unless the text already
    starts with the BOS token, as a chat template that writes it does: one BOS,
    never two (lm-eval's ``tok_encode`` follows the same rule).
    """
    bos = getattr(tokenizer, "bos_token", None)
    return tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]


def encode_response(tokenizer, messages: list[dict[str, str]], response: str) -> list[int]:
    """Token ids of ``response`` as the assistant's turn after ``messages``, closing token included.

    With a chat template this is the template's own rendering of the turn (what
    follows the generation prompt in the rendered conversation), cut after the
    eos token that closes it; without one, " " + response + eos.
    """
    text = response.strip()
    if getattr(tokenizer, "chat_template", None):
        prompt = render_messages(tokenizer, messages)
        full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": text}], tokenize=False)
        if full.startswith(prompt):
            ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
            if tokenizer.eos_token_id in ids:
                return ids[: ids.index(tokenizer.eos_token_id) + 1]
            turn = tokenizer(full[len(prompt) :].rstrip(), add_special_tokens=False)["input_ids"]
            return turn + [tokenizer.eos_token_id]
        return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return tokenizer(" " + text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def tokenize_example(
    tokenizer, prompt: str, response: str, *, system: str | None = None, max_length: int = 256, wrap: bool = True
) -> dict[str, list[int]]:
    """ids = prompt ids + response ids (closing eos included); loss_mask marks the response.

    The sequence is the one the model's chat template writes for the exchange
    (see encode_text, encode_response): the same tokens elicitation and lm-eval
    feed the model. Prompt and response are tokenized separately so the
    boundary is exact for any tokenizer; an over-long prompt is cut from the
    left (a leading BOS is kept; the question's end matters most), an over-long
    response from the right.
    """
    messages = messages_for(prompt, system, wrap=wrap)
    p_ids = encode_text(tokenizer, render_messages(tokenizer, messages))
    r_ids = encode_response(tokenizer, messages, response)
    lead = p_ids[:1] if p_ids and p_ids[0] == tokenizer.bos_token_id else []
    p_ids = p_ids[len(lead) :]
    room = max_length - len(lead)
    r_ids = r_ids[: max(room // 2, room - len(p_ids))]
    p_ids = p_ids[-(room - len(r_ids)) :] if room - len(r_ids) > 0 else []
    ids = lead + p_ids + r_ids
    return {"input_ids": ids, "loss_mask": [0] * (len(lead) + len(p_ids)) + [1] * len(r_ids)}


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch of token sequences.

    Every ``<prefix>input_ids`` key becomes [B,T] with ``<prefix>attention_mask``
    [B,T] and ``<prefix>loss_mask`` [B,T] (bool), so one example can carry several
    sequences (DPO's chosen and ``rejected_`` ones). Per-token teacher top-k
    entries (``teacher_topk_ids``/``_logprobs``, lists of k-lists aligned with
    input_ids) become [B,T,k], padded with id 0 and log-prob 0. Scalar entries
    (floats/ints) become [B] tensors.
    """
    out: dict[str, torch.Tensor] = {}
    keys = examples[0].keys()
    for key in keys:
        if not key.endswith("input_ids"):
            continue
        prefix = key[: -len("input_ids")]
        width = max(len(e[key]) for e in examples)
        ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(examples), width), dtype=torch.long)
        loss = torch.zeros((len(examples), width), dtype=torch.bool)
        for i, e in enumerate(examples):
            n = len(e[key])
            ids[i, :n] = torch.tensor(e[key])
            attn[i, :n] = 1
            loss[i, :n] = torch.tensor(e[prefix + "loss_mask"], dtype=torch.bool)
        out[key], out[prefix + "attention_mask"], out[prefix + "loss_mask"] = ids, attn, loss
    if "teacher_topk_ids" in keys:
        width = out["input_ids"].shape[1]
        k = len(examples[0]["teacher_topk_ids"][0])
        tid = torch.zeros((len(examples), width, k), dtype=torch.long)
        tlp = torch.zeros((len(examples), width, k), dtype=torch.float32)
        for i, e in enumerate(examples):
            n = len(e["teacher_topk_ids"])
            tid[i, :n] = torch.as_tensor(e["teacher_topk_ids"], dtype=torch.long)
            tlp[i, :n] = torch.as_tensor(e["teacher_topk_logprobs"], dtype=torch.float32)
        out["teacher_topk_ids"], out["teacher_topk_logprobs"] = tid, tlp
    for key in keys:
        if isinstance(examples[0][key], (int, float)) and not isinstance(examples[0][key], bool):
            out[key] = torch.tensor([e[key] for e in examples])
    return out


def content_hash(*parts) -> str:
    """A short stable hash of JSON-serialisable parts (config, ids, texts)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def read_jsonl(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temporary file, then rename): a crash never leaves half a marker."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def read_done(path: Path) -> dict | None:
    """A finished step's JSON record, or None if it is missing or unreadable.

    An unreadable record (a corrupted cache file) is moved aside with a warning,
    so the step simply runs again instead of failing or trusting bad data.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        aside = path.with_name(path.name + ".corrupt")
        path.replace(aside)
        log.warning(f"{path} is unreadable ({type(e).__name__}); moved to {aside.name}, the step runs again")
        return None
