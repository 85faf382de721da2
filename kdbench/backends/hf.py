"""The hf teacher backend: transformers models, batched, on this process's device."""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from kdbench.backends.base import Messages, Sampling
from kdbench.data import collate, encode_response, encode_text, pad_id, render_messages
from kdbench.models.loading import load_model
from kdbench.models.sampling import sample, token_logprobs


class HFBackend:
    """Batched ``generate`` with transformers: left padding, batches sorted by length."""

    name = "hf"

    def __init__(
        self,
        ref: str,
        *,
        revision=None,
        dtype="float32",
        device="cpu",
        trust_remote_code=False,
        batch_size: int = 32,
        model=None,
        tokenizer=None,
    ):
        if model is None:
            model, tokenizer = load_model(
                ref, revision=revision, dtype=dtype, device=device, trust_remote_code=trust_remote_code
            )
        assert tokenizer is not None, "HFBackend(model=...) needs the model's tokenizer too"
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device, self.batch_size = device, batch_size
        self.generated_tokens = 0
        self.seconds = 0.0

    @torch.inference_mode()
    def generate(self, requests: list[Messages], sampling: Sampling, desc: str = "generate") -> list[str]:
        """Greedy, or samples from the model's own softmax(logits / temperature) with top_p: nothing from the
        model's generation_config (top_k, repetition penalty, ...) bends the draws (kdbench.models.sampling)."""
        tok = self.tokenizer
        ids = [encode_text(tok, render_messages(tok, m)) for m in requests]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        outputs: list[str] = [""] * len(ids)
        gen = torch.Generator(device="cpu").manual_seed(sampling.seed)
        bar = tqdm(range(0, len(order), self.batch_size), desc=desc, dynamic_ncols=True, mininterval=1.0)
        for start in bar:
            batch = order[start : start + self.batch_size]
            t0 = time.perf_counter()
            conts, _ = sample(
                self.model,
                [ids[i] for i in batch],
                max_new_tokens=sampling.max_new_tokens,
                eos=tok.eos_token_id,
                pad=pad_id(tok),
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                generator=gen,
            )
            self.seconds += time.perf_counter() - t0
            for i, c in zip(batch, conts, strict=True):
                self.generated_tokens += len(c)
                outputs[i] = tok.decode(c, skip_special_tokens=True).strip()
            bar.set_postfix(tok_s=f"{self.generated_tokens / max(self.seconds, 1e-9):,.0f}")
        return outputs

    @torch.inference_mode()
    def score(self, requests: list[Messages], responses: list[str], desc: str = "score") -> list[tuple[float, int]]:
        """(sum of log-probs, token count) of each response given its request: the teacher as judge."""
        tok = self.tokenizer
        examples = []
        for m, r in zip(requests, responses, strict=True):
            p_ids, r_ids = encode_text(tok, render_messages(tok, m)), encode_response(tok, m, r)
            examples.append({"input_ids": p_ids + r_ids, "loss_mask": [0] * len(p_ids) + [1] * len(r_ids)})
        out: list[tuple[float, int]] = []
        for start in tqdm(range(0, len(examples), self.batch_size), desc=desc, dynamic_ncols=True, mininterval=1.0):
            b = {
                k: v.to(self.device) for k, v in collate(examples[start : start + self.batch_size], pad_id(tok)).items()
            }
            logits = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
            lp = token_logprobs(logits, b["input_ids"][:, 1:])
            mask = b["loss_mask"][:, 1:]
            out += [
                (float(s), int(n)) for s, n in zip((lp * mask).sum(-1).tolist(), mask.sum(-1).tolist(), strict=True)
            ]
        return out
