"""The one training loop: distillation, the self-knowledge warm-up and the tiny models share it.

A caller supplies a *step function* ``step_fn(ctx, batch) -> (loss, logs)``
(see :class:`StepContext`; :func:`sft_step` is the plain cross-entropy one);
this module owns everything around it: device placement under accelerate,
optional LoRA, AdamW with warm-up and cosine decay, a deterministic batch
order, a progress bar, periodic atomic checkpoints with exact resume, a guard
that stops on a NaN/inf loss, and the saved model.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kdbench.data import collate, pad_id
from kdbench.errors import NonFiniteLossError, RuntimeFailure, UserError
from kdbench.log import get_logger

log = get_logger(__name__)


@dataclass
class StepContext:
    """What a step function may use. ``teacher`` is None for black-box algorithms."""

    student: torch.nn.Module
    teacher: torch.nn.Module | None
    tokenizer: Any
    hp: Any  # the algorithm's typed hyperparameters
    device: torch.device
    step: int = 0
    generator: torch.Generator | None = None
    fused: bool = False  # compute losses from hidden states chunk by chunk (kdbench.distill.fused), not logits
    extra: dict = field(default_factory=dict)  # algorithm-owned state (e.g. a projection head)


StepFn = Callable[[StepContext, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


def causal_lm_ce(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over masked target tokens.

    logits [B,T,V] (position t predicts token t+1), input_ids [B,T], loss_mask [B,T]
    marking the target tokens.
    """
    target_mask = loss_mask[:, 1:]
    if not target_mask.any():
        return logits.sum() * 0.0
    pred = logits[:, :-1][target_mask]
    return F.cross_entropy(pred.float(), input_ids[:, 1:][target_mask])


def sft_step(ctx: StepContext, batch):
    """Cross-entropy on the response tokens. batch: input_ids/attention_mask/loss_mask [B,T]."""
    logits = ctx.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return causal_lm_ce(logits, batch["input_ids"], batch["loss_mask"]), {}


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    train_tokens: int
    seconds: float
    tokens_per_s: float
    peak_mem_mb: float
    final_loss: float
    resumed_from: int = 0
    main_process: bool = True  # False in the other processes of a multi-process launch: they write nothing


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _global_mean(accelerator, loss: torch.Tensor, n_local: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(the loss each of N processes backpropagates, the batch's loss) for a loss that is a mean over n_local
    target tokens of this process's share of the batch.

    DDP averages the processes' gradients; scaled by N * n_local / n_global, their average is the gradient of the
    mean over all the batch's tokens, as on one process (a loss that averages over sequences is weighed by
    tokens instead). Every process gets the same batch loss, so all stop together on a NaN.
    """
    n = n_local.detach().float()
    n_global = cast(torch.Tensor, accelerator.reduce(n.clone(), "sum")).clamp_min(1.0)
    total = cast(torch.Tensor, accelerator.reduce(loss.detach() * n, "sum"))
    return loss * (accelerator.num_processes * n / n_global), float(total / n_global)


def _batch_order(lengths: list[int], batch_size: int, total_steps: int, seed: int) -> list[list[int]]:
    """Deterministic batches, so a resumed run sees exactly the batches it would have.

    Each epoch draws a seeded permutation, sorts windows of 16 batches by length
    (less padding, often 1.3x faster on short chat examples) and shuffles the
    resulting batches.
    """
    n = len(lengths)
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < total_steps:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=g).tolist()
        window = batch_size * 16
        epoch_batches = []
        for w in range(0, n, window):
            part = sorted(perm[w : w + window], key=lengths.__getitem__)
            epoch_batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
        order = torch.randperm(len(epoch_batches), generator=g).tolist()
        batches += [epoch_batches[i] for i in order]
        epoch += 1
    return batches[:total_steps]


def _save_checkpoint(ckpt: Path, model, optimizer, scheduler, step: int, extra: dict) -> None:
    """Write to a temporary folder, then swap it in: a failed write never replaces a good checkpoint."""
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "extra": {k: v.state_dict() for k, v in extra.items() if hasattr(v, "state_dict")},
        },
        tmp / "state.pt",
    )
    (tmp / "step.json").write_text(json.dumps({"step": step}))
    old = ckpt.with_name(ckpt.name + ".old")
    shutil.rmtree(old, ignore_errors=True)  # left by a save killed while removing it
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(ckpt: Path, model, optimizer, scheduler, extra: dict) -> int:
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    for k, v in state.get("extra", {}).items():
        if k in extra and hasattr(extra[k], "load_state_dict"):
            extra[k].load_state_dict(v)
    return json.loads((ckpt / "step.json").read_text())["step"]


def train(
    student,
    tokenizer,
    examples: list[dict],
    step_fn: StepFn,
    *,
    cfg,
    out_dir: Path,
    seed: int,
    teacher=None,
    hp=None,
    device: str = "cpu",
    log_fn: Callable[[int, dict], None] | None = None,
    desc: str = "train",
    extra: dict | None = None,
) -> TrainResult:
    """Train ``student`` on tokenized ``examples`` with ``step_fn``; save to out_dir/model.

    examples: dicts with input_ids and loss_mask (see kdbench.data.tokenize_example).
    cfg: a TrainConfig. A checkpoint in out_dir/checkpoint is resumed from.

    ``log_fn(step, values)`` receives the training curve's points (every ``cfg.log_every`` steps), but only
    once a checkpoint covering them is written, and the rest once the model is saved: a run killed
    after its last checkpoint resumes from it and logs the steps after it once, never twice.
    """
    from accelerate import Accelerator
    from transformers import get_cosine_schedule_with_warmup

    if not examples:
        raise UserError(f"{desc}: no training examples; check the elicited dataset")
    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=device == "cpu")
    dev = accelerator.device
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        student = get_peft_model(
            student,
            LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
    extra = extra or {}
    params = [p for p in student.parameters() if p.requires_grad]
    params += [p for m in extra.values() if isinstance(m, torch.nn.Module) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(examples) / cfg.batch_size))
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    # modules an algorithm trains beside the student (hidden's projections) are prepared with it, so under
    # several processes their gradients synchronise too
    modules = [k for k, m in extra.items() if isinstance(m, torch.nn.Module)]
    # the scheduler is not prepared: accelerate would step it once per process (each process's batches counted as
    # the dataset's), where here N processes share each batch and the schedule is in global steps
    student, optimizer, *prepared = accelerator.prepare(student, optimizer, *[extra[k] for k in modules])
    extra = {**extra, **dict(zip(modules, prepared, strict=True))}
    unwrapped = {k: accelerator.unwrap_model(extra[k]) for k in modules}  # what checkpoints hold
    if teacher is not None:
        teacher.to(dev).eval().requires_grad_(False)

    out_dir = Path(out_dir)
    ckpt = out_dir / "checkpoint"
    start = 0
    old = ckpt.with_name(ckpt.name + ".old")  # killed while swapping in a new one: the previous is whole
    main = accelerator.is_main_process  # of several processes, the one that moves files
    if main and not (ckpt / "step.json").exists() and (old / "step.json").exists():
        shutil.rmtree(ckpt, ignore_errors=True)
        old.rename(ckpt)
    accelerator.wait_for_everyone()
    if (ckpt / "step.json").exists():
        try:
            start = _load_checkpoint(ckpt, accelerator.unwrap_model(student), optimizer, scheduler, unwrapped)
            log.info(f"{desc}: resuming from the checkpoint at step {start}/{total}")
        except Exception as e:  # a truncated or corrupted file: keep it for inspection, start over
            accelerator.wait_for_everyone()  # every process has read it before it moves
            if main:
                aside = ckpt.with_name(f"checkpoint.corrupt-{int(time.time())}")
                ckpt.rename(aside)
                log.warning(
                    f"{desc}: the checkpoint in {ckpt} cannot be read ({type(e).__name__}: "
                    f"{str(e)[:200]}); moved to {aside.name}, training starts from step 0"
                )
            start = 0

    ctx = StepContext(
        student=student,
        teacher=teacher,
        tokenizer=tokenizer,
        hp=hp,
        device=dev,
        generator=torch.Generator().manual_seed(seed),
        extra=extra,
        fused=bool(getattr(cfg, "fused", False)),
    )
    order = _batch_order([len(e["input_ids"]) for e in examples], cfg.batch_size, total, seed)
    pad = pad_id(tokenizer)
    tokens, loss_val, t0 = 0, float("nan"), time.perf_counter()
    last_saved = start if start else None
    pending: list[tuple[int, dict]] = []  # curve points not yet covered by a checkpoint

    def send() -> None:
        if log_fn is not None:
            for point in pending:
                log_fn(*point)
        pending.clear()

    several = accelerator.num_processes > 1
    if not accelerator.is_main_process:
        log_fn = None  # the main process logs the curve and writes checkpoints and the model
    student.train()
    bar = tqdm(
        range(start, total),
        desc=desc,
        initial=start,
        total=total,
        dynamic_ncols=True,
        mininterval=1.0,
        disable=not accelerator.is_main_process,
    )
    for step in bar:
        ctx.step = step
        idx = order[step][accelerator.process_index :: accelerator.num_processes] or order[step]
        batch = {k: v.to(dev) for k, v in collate([examples[i] for i in idx], pad).items()}
        loss, logs = step_fn(ctx, batch)
        if several:  # each process's loss is a mean over its share's target tokens: weigh it to the global mean
            loss, loss_val = _global_mean(accelerator, loss, batch["loss_mask"][:, 1:].sum())
        else:
            loss_val = float(loss.detach())
        if not math.isfinite(loss_val):
            raise NonFiniteLossError(step, loss_val, str(ckpt) if last_saved is not None else None)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if cfg.grad_clip:
            accelerator.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        tokens += int(batch["attention_mask"].sum())
        if step % cfg.log_every == 0 or step == total - 1:
            rate = tokens / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss_val:.4f}", tok_s=f"{rate:,.0f}")
            if log_fn is not None:
                values = {"train.loss": loss_val, "train.lr": scheduler.get_last_lr()[0]}
                pending.append((step, {**values, **{f"train.{k}": v for k, v in logs.items()}}))
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
            if accelerator.is_main_process:  # one writer; every process holds the same weights (DDP)
                try:
                    model = accelerator.unwrap_model(student)
                    _save_checkpoint(ckpt, model, optimizer, scheduler, step + 1, unwrapped)
                except OSError as e:
                    kept = f"the checkpoint at step {last_saved} is kept" if last_saved else "no earlier checkpoint"
                    raise RuntimeFailure(
                        f"{desc}: could not write the checkpoint at step {step + 1} in {ckpt} ({e}); "
                        f"{kept}. Free disk space or fix permissions and rerun to resume."
                    ) from e
            accelerator.wait_for_everyone()
            last_saved = step + 1
            send()  # a rerun resumes after these steps: they are logged once
    bar.close()
    seconds = time.perf_counter() - t0
    if several:  # every process's tokens
        tokens = int(cast(torch.Tensor, accelerator.reduce(torch.tensor(tokens, device=dev), "sum")).item())

    model = accelerator.unwrap_model(student)
    if cfg.lora:
        model = model.merge_and_unload()
    model_dir = out_dir / "model"
    if accelerator.is_main_process:
        tmp = out_dir / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(model_dir, ignore_errors=True)
        tmp.rename(model_dir)
        shutil.rmtree(ckpt, ignore_errors=True)
    accelerator.wait_for_everyone()
    send()
    return TrainResult(
        model_dir=model_dir,
        steps=total,
        train_tokens=tokens,
        seconds=seconds,
        tokens_per_s=tokens / max(seconds, 1e-9),
        peak_mem_mb=_peak_mem_mb(dev),
        final_loss=loss_val,
        resumed_from=start,
        main_process=accelerator.is_main_process,
    )
