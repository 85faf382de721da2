"""Every check that can fail on bad input, run before anything is written anywhere.

The CLI calls it before starting a flow, and the flows call it first thing, so
a deployment triggered with bad parameters fails at once with the same message
and leaves no MLflow runs behind.
"""

from __future__ import annotations

import os
import urllib.request

from kdbench.backends import resolve_backend_name
from kdbench.config import TINY
from kdbench.distill.registry import elicitation_methods, hparams_for
from kdbench.distill.run import check_algorithms
from kdbench.elicit import check_methods
from kdbench.errors import ConfigError, UserError
from kdbench.evaluate import tasks_for
from kdbench.models.refs import is_local, layers_of
from kdbench.packs import load_pack


def preflight(cfg) -> None:
    pack = load_pack(cfg.pack)
    check_algorithms(cfg.distill.algorithms)
    check_methods(elicitation_methods(cfg), pack)
    resolve_backend_name(cfg.elicit.backend)
    tasks_for(pack, cfg)
    for algo in cfg.distill.algorithms:
        hparams_for(algo, cfg.distill.hparams.get(algo))
    for name in cfg.distill.hparams:
        check_algorithms([name])
    refs = [cfg.models.teacher, *cfg.models.students]
    for ref in refs:  # malformed pruned:<ref>:<N>, N out of range, smollm2 without its package
        layers_of(ref, tiny_layers=cfg.tiny.teacher.num_layers)
    if cfg.models.teacher_adapt.epochs > 0 and cfg.models.teacher == TINY:
        raise ConfigError(
            "models.teacher_adapt: the tiny teacher is already trained on the pack (tiny.teacher_epochs sets how "
            "long); adaptation is for a pretrained teacher. Set models.teacher_adapt.epochs to 0, or use another "
            "teacher"
        )
    local = all(is_local(r) for r in refs)
    if local and not cfg.eval.public:  # nothing needs the hub: make sure nothing tries it
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if cfg.eval.public and os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", ""):
        raise UserError(
            "--public evaluates on the pack's public lm-eval tasks "
            f"({', '.join(pack.spec.public_tasks)}), which need the Hugging Face hub; "
            "this machine is offline (HF_DATASETS_OFFLINE=1). Run without --public."
        )
    if cfg.eval.public:
        _check_hub_reachable(pack)


def _check_hub_reachable(pack) -> None:
    try:
        urllib.request.urlopen("https://huggingface.co/api/datasets?limit=1", timeout=5)
    except OSError as e:
        raise UserError(
            f"--public needs the Hugging Face hub for {', '.join(pack.spec.public_tasks)}, "
            f"but it cannot be reached ({e}). Run without --public, or on a connected machine."
        ) from None
