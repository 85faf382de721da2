"""dpo: rank optimisation on pairs the teacher judged (Rafailov et al., 2023).

The feedback elicitation method produces (prompt, chosen, rejected) pairs: the
teacher's answer and the student's, ordered by the teacher's judgement. The
student is trained with the DPO loss against a frozen reference, itself before
training; the reference log-probabilities are computed once, before the first
step, so the reference model is not kept in memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from kdbench.data import collate, pad_id, tokenize_example
from kdbench.models.sampling import token_logprobs
from kdbench.training import StepContext


class DPOConfig(BaseModel):
    """Defaults from the DPO paper: beta = 0.1, no label smoothing."""

    model_config = ConfigDict(extra="forbid")
    beta: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)  # conservative DPO
    sft_weight: float = Field(0.0, ge=0)  # + NLL of the chosen answer (RPO-style regulariser)


def sequence_logprob(model, input_ids, attention_mask, loss_mask) -> torch.Tensor:
    """Sum of log q(token) over the loss-masked target tokens. [B,T] -> [B]."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    return (token_logprobs(logits, input_ids[:, 1:]) * loss_mask[:, 1:]).sum(-1)


@torch.no_grad()
def prepare(rows: list[dict], tokenizer, max_length: int, student, batch_size: int = 16) -> list[dict]:
    """Tokenize pairs and attach the reference (initial student) log-probs of both sides."""
    examples = []
    for r in rows:
        c = tokenize_example(tokenizer, r["prompt"], r["chosen"], max_length=max_length)
        j = tokenize_example(tokenizer, r["prompt"], r["rejected"], max_length=max_length)
        examples.append(
            {
                "input_ids": c["input_ids"],
                "loss_mask": c["loss_mask"],
                "rejected_input_ids": j["input_ids"],
                "rejected_loss_mask": j["loss_mask"],
            }
        )
    pad = pad_id(tokenizer)
    student.eval()
    for i in range(0, len(examples), batch_size):
        part = examples[i : i + batch_size]
        b = collate(part, pad)
        ref_c = sequence_logprob(student, b["input_ids"], b["attention_mask"], b["loss_mask"])
        ref_r = sequence_logprob(
            student, b["rejected_input_ids"], b["rejected_attention_mask"], b["rejected_loss_mask"]
        )
        for e, c, r in zip(part, ref_c.tolist(), ref_r.tolist(), strict=True):
            e["ref_chosen"], e["ref_rejected"] = float(c), float(r)
    student.train()
    return examples


def dpo_step(ctx: StepContext, batch):
    hp: DPOConfig = ctx.hp
    pc = sequence_logprob(ctx.student, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
    pr = sequence_logprob(
        ctx.student, batch["rejected_input_ids"], batch["rejected_attention_mask"], batch["rejected_loss_mask"]
    )
    margin = hp.beta * ((pc - batch["ref_chosen"]) - (pr - batch["ref_rejected"]))
    loss = (-(1 - hp.label_smoothing) * F.logsigmoid(margin) - hp.label_smoothing * F.logsigmoid(-margin)).mean()
    logs = {
        "reward_margin": float(margin.detach().mean() / hp.beta),
        "reward_accuracy": float((margin.detach() > 0).float().mean()),
    }
    if hp.sft_weight:
        n = batch["loss_mask"][:, 1:].sum().clamp_min(1)
        nll = -pc.sum() / n
        loss = loss + hp.sft_weight * nll
        logs["chosen_nll"] = float(nll.detach())
    return loss, logs
