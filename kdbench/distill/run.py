"""Distill one student with one algorithm and one seed: the step flows call.

The output folder is named by a content hash of everything that determines the
result (algorithm, hyperparameters, seed, teacher, student, data), holds a
resumable checkpoint while training runs, and a DONE file when it has finished;
a finished folder is reused as it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from kdbench.data import content_hash, read_done, read_jsonl, tokenize_example, write_json
from kdbench.dataset import DatasetInfo, load_examples
from kdbench.distill.launch import check_processes, launch
from kdbench.distill.registry import ALGORITHMS, hparams_for
from kdbench.distill.uld import add_teacher_tokens
from kdbench.errors import ConfigError, RuntimeFailure, UserError, did_you_mean
from kdbench.locks import locked
from kdbench.models.loading import identity, load_model, load_tokenizer
from kdbench.topk import TopKCache
from kdbench.training import train


@dataclass
class DistillResult:
    model_dir: str
    algorithm: str
    seed: int
    steps: int
    train_tokens: int
    seconds: float
    tokens_per_s: float
    peak_mem_mb: float
    final_loss: float
    resumed_from: int
    cached: bool = False
    hparams: dict | None = None


def check_algorithms(names: list[str]) -> None:
    for n in names:
        if n not in ALGORITHMS:
            raise ConfigError(
                f"unknown algorithm {n!r}{did_you_mean(n, ALGORITHMS)}; available: "
                f"{', '.join(ALGORITHMS)} (see `kdbench algorithms`)"
            )


def check_same_vocab(algorithm: str, teacher_tok, student_tok, teacher_ref: str, student_ref: str) -> None:
    """White-box algorithms compare distributions token by token: one vocabulary or nothing.

    One vocabulary is one tokenizer: models whose embedding matrices are padded to different sizes
    past it still share it (the losses compare the real tokens only; see divergence.real_tokens).
    """
    if teacher_tok.get_vocab() == student_tok.get_vocab():
        return
    cross = [n for n, a in ALGORITHMS.items() if a.cross_tokenizer]
    black = [n for n, a in ALGORITHMS.items() if not a.white_box]
    raise UserError(
        f"algorithm {algorithm!r} compares token distributions, but the teacher {teacher_ref!r} "
        f"(vocabulary of {len(teacher_tok)} tokens) and the student {student_ref!r} "
        f"(vocabulary of {len(student_tok)} tokens) do not share a vocabulary. "
        f"Use a student with the teacher's tokenizer, a cross-tokenizer algorithm: {', '.join(cross)}, "
        f"or a black-box algorithm: {', '.join(black)}"
    )


def uses_topk(algorithm: str, manifest: dict, cfg) -> bool:
    algo = ALGORITHMS[algorithm]
    return bool(
        algo.white_box
        and not algo.teacher_model
        and manifest.get("topk")
        and cfg.distill.teacher_logits in ("auto", "topk")
    )


def train_key(train_cfg) -> dict:
    """The training settings that set a student's weights: fused or not is one result, and so is one process
    (the key of results trained before `processes` existed is unchanged)."""
    key = train_cfg.model_dump(exclude={"fused"})
    if key["processes"] == 1:
        del key["processes"]
    return key


def distill_key(algorithm: str, seed: int, teacher_ref: str, student_ref: str, manifest: dict, cfg) -> str:
    hp = hparams_for(algorithm, cfg.distill.hparams.get(algorithm))
    topk = manifest["topk"]["k"] if uses_topk(algorithm, manifest, cfg) else None
    gold = ALGORITHMS[algorithm].data == "gold"
    return content_hash(
        algorithm,
        seed,
        None if gold else identity(teacher_ref, cfg.models.revision),  # gold never sees the teacher
        identity(student_ref),
        manifest["gold"]["hash"] if gold else manifest["data_hash"],
        train_key(cfg.distill.train),
        hp.model_dump(exclude={"chunk_size"}),  # a memory knob, like `fused`: one result to float rounding
        topk,
    )


def distill(
    algorithm: str,
    seed: int,
    teacher_ref: str,
    student_ref: str,
    data: DatasetInfo,
    cfg,
    home: Path,
    *,
    device: str = "cpu",
    log_fn=None,
) -> DistillResult:
    check_algorithms([algorithm])
    key = distill_key(algorithm, seed, teacher_ref, student_ref, data.manifest, cfg)
    out = Path(home) / "students" / f"{data.manifest['pack']}-{algorithm}-s{seed}-{key}"
    processes = cfg.distill.train.processes
    with locked(out):
        done = read_done(out / "DONE")
        if done is not None:
            return DistillResult(**{**done, "cached": True})
        if processes == 1:
            return train_student(
                algorithm, seed, teacher_ref, student_ref, data, cfg, out, device=device, log_fn=log_fn
            )
        check_processes(cfg.distill.train, device)
        spec = {
            "algorithm": algorithm,
            "seed": seed,
            "teacher_ref": teacher_ref,
            "student_ref": student_ref,
            "data_path": str(data.path),
            "manifest": data.manifest,
            "cfg": cfg.model_dump(mode="json"),
            "out": str(out),
            "device": device,
            "desc": f"{data.manifest['pack']}: {algorithm} seed {seed}",
        }
        launch(spec, out, processes, log_fn)
        done = read_done(out / "DONE")
        if done is None:
            raise RuntimeFailure(f"{spec['desc']}: the launch on {processes} processes ended without {out / 'DONE'}")
        return DistillResult(**done)


def train_student(
    algorithm: str,
    seed: int,
    teacher_ref: str,
    student_ref: str,
    data: DatasetInfo,
    cfg,
    out: Path,
    *,
    device: str = "cpu",
    log_fn=None,
) -> DistillResult:
    """Load, train and save one student in ``out`` (in this process, or as one of a launch's processes: then the
    main process alone writes the DONE file)."""
    algo = ALGORITHMS[algorithm]
    hp = hparams_for(algorithm, cfg.distill.hparams.get(algorithm))
    student, tok = load_model(
        student_ref, dtype=cfg.models.dtype, device="cpu", trust_remote_code=cfg.models.trust_remote_code
    )
    if algo.data == "gold":  # the pack's reference answers, not the teacher's data
        rows = read_jsonl(Path(data.manifest["gold"]["path"]))
        if not rows:
            raise UserError(
                f"algorithm 'gold' trains on reference answers, but pack {data.manifest['pack']!r} has none: give "
                "seeds an `answer` (or a `fact` naming a knowledge item); see domains/README.md"
            )
    else:
        all_rows = load_examples(data)
        rows = (
            [r for r in all_rows if r.get("chosen")]
            if algo.data == "pairs"  # rejected may be empty
            else [r for r in all_rows if r.get("response")]
        )
    if not rows:
        need = f"pairs from the {', '.join(algo.needs_methods)} elicitation" if algo.data == "pairs" else "responses"
        raise UserError(
            f"algorithm {algorithm!r} needs {need}, but the dataset at {data.path} has none; "
            f"add the method with --methods"
        )
    topk = None
    if uses_topk(algorithm, data.manifest, cfg):
        topk = TopKCache(Path(data.manifest["topk"]["path"]))
    elif cfg.distill.teacher_logits == "topk" and algo.white_box:
        raise UserError(
            f"distill.teacher_logits: topk needs the feature method's cache (add --methods ...,feature)"
            f" and an algorithm that reads it (fkl, rkl, jsd, tvd, skl, srkl); {algorithm!r} does not"
        )
    teacher, t_tok = None, None
    if algo.white_box:
        t_tok = load_tokenizer(
            teacher_ref, revision=cfg.models.revision, trust_remote_code=cfg.models.trust_remote_code
        )
        if not algo.cross_tokenizer:
            check_same_vocab(algorithm, t_tok, tok, teacher_ref, student_ref)
        if topk is None:
            teacher, _ = load_model(
                teacher_ref,
                revision=cfg.models.revision,
                dtype=cfg.models.dtype,
                device="cpu",
                trust_remote_code=cfg.models.trust_remote_code,
            )
    max_len = cfg.distill.train.max_length
    if algo.prepare is not None:
        examples = algo.prepare(rows, tok, max_len, student)
    else:
        examples = [tokenize_example(tok, r["prompt"], r["response"], max_length=max_len) for r in rows]
    if algo.cross_tokenizer:  # the same text through the teacher's chat template and tokenizer
        assert t_tok is not None, "a cross-tokenizer algorithm is white-box: the teacher's tokenizer is loaded"
        examples = add_teacher_tokens(examples, rows, t_tok, max_len)
    if topk is not None:
        attached = [topk.attach(r["id"], e) for r, e in zip(rows, examples, strict=True)]
        missing = sum(a is None for a in attached)
        if missing:
            raise RuntimeFailure(
                f"the teacher top-k cache at {topk.path} does not cover {missing} training rows "
                "(tokenized differently?); delete that folder to rebuild it"
            )
        examples = [e for e in attached if e is not None]  # all of them
    extra = algo.make_extra(student, teacher, hp) if algo.make_extra else None
    result = train(
        student,
        tok,
        examples,
        algo.step,
        cfg=cfg.distill.train,
        out_dir=out,
        seed=seed,
        teacher=teacher,
        hp=hp,
        device=device,
        log_fn=log_fn,
        extra=extra,
        desc=f"{data.manifest['pack']}: {algorithm} seed {seed}",
    )
    done = DistillResult(
        model_dir=str(result.model_dir),
        algorithm=algorithm,
        seed=seed,
        steps=result.steps,
        train_tokens=result.train_tokens,
        seconds=round(result.seconds, 2),
        tokens_per_s=round(result.tokens_per_s, 1),
        peak_mem_mb=round(result.peak_mem_mb, 1),
        final_loss=result.final_loss,
        resumed_from=result.resumed_from,
        hparams=hp.model_dump(),
    )
    if result.main_process:
        write_json(out / "DONE", asdict(done))
    return done
