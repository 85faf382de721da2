"""`kdbench eval`: the standalone ``lm_eval`` command lines that reproduce kdbench's scores.

For a run's configuration, one command per model kdbench evaluates: the teacher, each student before
distillation (the embedded tiny ones where they are built for the pack), and each distilled student the
tracking store holds for the pack. Each passes lm_eval what kdbench/evaluate.py passes
``lm_eval.simple_evaluate``; what lm_eval's command line cannot say is named in comment lines.
tests/test_eval_command.py holds the two side by side.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from kdbench import names, tracking
from kdbench.config import TINY, device_for
from kdbench.evaluate import _chat, chosen_samples, task_list
from kdbench.models.tiny import models_dir
from kdbench.packs import load_pack

# what kdbench/evaluate.py passes simple_evaluate that lm_eval's command line has no flag for; no score depends on it
NOT_ON_THE_COMMAND_LINE = (
    "bootstrap_iters=0 (kdbench computes no bootstrap standard errors: lm_eval's _stderr of a non-mean "
    "metric such as rougeL may differ, no score does)",
    "log_samples=True (kdbench keeps each item's prediction; add --log_samples --output_path DIR for them)",
    "TaskManager(include_defaults=eval.public) (lm_eval's command line always indexes its own tasks too)",
    "no metadata (lm_eval's command line passes the model_args to the tasks as metadata; the pack's tasks read none)",
    "verbosity=ERROR (fewer log lines; LMEVAL_LOG_LEVEL=ERROR does the same)",
)


@dataclass
class Model:
    label: str
    ref: str  # a folder or a hub id
    tiny: bool = False  # an embedded model, which has a chat template (built or not)


def models_of(cfg) -> tuple[list[Model], list[str]]:
    """The run's models (teacher, each student before, each distilled student tracked for the pack) and notes."""
    pack = load_pack(cfg.pack)
    notes: list[str] = []
    tiny_root = models_dir(pack, cfg.tiny, cfg.home_path)
    uses_tiny = TINY in [cfg.models.teacher, *cfg.models.students]
    if uses_tiny and not (tiny_root / "DONE").exists():
        notes.append(f"the tiny models are not built yet (in {tiny_root}): `kdbench run` builds them")
    teacher = str(tiny_root / "teacher") if cfg.models.teacher == TINY else cfg.models.teacher
    out = [Model("teacher", teacher, tiny=cfg.models.teacher == TINY)]
    several = len(cfg.models.students) > 1
    for i, s in enumerate(cfg.models.students):
        ref = str(tiny_root / "student") if s == TINY else s
        out.append(Model(f"student{f' {i}' if several else ''} before distillation", ref, tiny=s == TINY))
    distilled, note = _distilled(cfg, pack.name)
    return out + distilled, notes + ([note] if note else [])


def _distilled(cfg, pack: str) -> tuple[list[Model], str]:
    uri = tracking.tracking_uri(cfg)
    db = tracking.sqlite_path(uri)
    if db is not None and not db.is_file():
        return [], f"no distilled students: no tracking store at {db} yet"
    c = tracking.open_client(uri)
    exp = c.get_experiment_by_name(tracking.experiment_name(cfg, pack))
    if exp is None:
        return [], f"no distilled students: the tracking store {uri} has no runs of pack {pack}"
    runs = c.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{names.tag(names.ROLE)}` = '{names.ROLE_AFTER}' and attributes.status = 'FINISHED'",
        max_results=5000,
    )
    found: dict[str, Model] = {}
    for r in runs:
        tags = r.data.tags
        folder = tags.get(names.tag(names.MODEL_DIR))
        if folder and folder not in found:
            label = (
                f"{tags.get(names.tag(names.ALGORITHM))} seed {tags.get(names.tag(names.SEED))} (student "
                f"{tags.get(names.tag(names.STUDENT))}, teacher {tags.get(names.tag(names.TEACHER))}, "
                f"MLflow run {r.info.run_id})"
            )
            found[folder] = Model(label, folder)
    note = "" if found else f"no distilled students tracked for pack {pack} in {uri} yet"
    return sorted(found.values(), key=lambda m: m.label), note


def lm_eval_args(ref: str, pack, cfg, *, tiny: bool = False) -> tuple[list[str], str]:
    """lm_eval's arguments evaluating ``ref`` as kdbench does, and a note (when the chat template is unknown).
    ``tiny``: an embedded model, whose tokenizer has a chat template before it is even built."""
    model_args = {"pretrained": ref, "dtype": cfg.models.dtype, "trust_remote_code": cfg.models.trust_remote_code}
    if cfg.models.revision and not Path(ref).exists():
        model_args["revision"] = cfg.models.revision
    args = [
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        ",".join(f"{k}={v}" for k, v in model_args.items()),
        "--include_path",
        str(pack.eval_dir),
        "--tasks",
        ",".join(task_list(pack, cfg)),  # printing runs none of the pack's code: no trust check
    ]
    chat, note = cfg.eval.apply_chat_template == "yes", ""
    try:
        chat = _chat(ref, cfg)  # "auto" reads the model's tokenizer
    except Exception as e:  # noqa: BLE001  (a folder not built yet, a hub model offline: its tokenizer is unknown)
        if tiny:  # an embedded model not built yet: its tokenizer will have a chat template
            chat = cfg.eval.apply_chat_template != "no"
        else:
            note = (
                f"its tokenizer cannot be read here ({type(e).__name__}), so whether kdbench applies its chat "
                "template is unknown: add --apply_chat_template if it has one"
            )
    if chat:
        args.append("--apply_chat_template")
    # kdbench passes the device in model_args; lm_eval's command line always passes --device (default cuda:0)
    # beside them, and both reach the model as one keyword: so it goes there (the model gets the same)
    args += ["--device", device_for(cfg), "--batch_size", str(cfg.eval.batch_size)]
    tasks = task_list(pack, cfg)
    chosen = chosen_samples(tasks, pack.eval_items, cfg.eval.limit)
    if chosen is not None:  # eval.limit: the same stratified items kdbench evaluates (not lm_eval's first N)
        args += ["--samples", json.dumps(chosen, separators=(",", ":"))]
    args += ["--gen_kwargs", f"max_gen_toks={cfg.eval.max_gen_toks}", "--seed", "0"]
    return args, note


def offline_env(cfg) -> dict[str, str]:
    """The variables kdbench sets when no model needs the hub (see preflight), which keep lm_eval offline too."""
    refs = [cfg.models.teacher, *cfg.models.students]
    if cfg.eval.public or not all(r == TINY or Path(r).exists() for r in refs):
        return {}
    return {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def command_lines(cfg) -> list[str]:
    """The output of `kdbench eval`: comment lines, and one shell command per model."""
    pack = load_pack(cfg.pack)
    models, notes = models_of(cfg)
    env = " ".join(f"{k}={v}" for k, v in offline_env(cfg).items())
    lines = [
        f"# lm_eval commands reproducing kdbench's scores on pack {pack.name} ({', '.join(task_list(pack, cfg))}) "
        "with this run's settings (eval.* and models.* of the config and flags given); any directory will do.",
        "# Set by kdbench but not on lm_eval's command line (no score changes):",
        *(f"#   {n}" for n in NOT_ON_THE_COMMAND_LINE),
        *(f"# note: {n}" for n in notes),
    ]
    for m in models:
        args, note = lm_eval_args(m.ref, pack, cfg, tiny=m.tiny)
        lines += ["", f"# {m.label}: {m.ref}"] + ([f"# note: {note}"] if note else [])
        lines.append((f"{env} " if env else "") + shlex.join(args))
    return lines
