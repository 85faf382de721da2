"""Every check that can fail on bad input, run before anything is written anywhere.

The CLI calls it before starting a flow, and the flows call it first thing, so
a deployment triggered with bad parameters fails at once with the same message
and leaves no MLflow runs behind.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from kdbench.backends import resolve_backend_name
from kdbench.backends.openai import api_key
from kdbench.config import TINY, device_for
from kdbench.distill.launch import check_processes
from kdbench.distill.registry import elicitation_methods, hparams_for
from kdbench.distill.run import check_algorithms
from kdbench.elicit import check_methods
from kdbench.errors import ConfigError, UserError
from kdbench.evaluate import checked_retention_tasks, tasks_for
from kdbench.models.loading import offline
from kdbench.models.refs import PRUNED, SMOLLM2, is_local, layers_of, needs_tiny, parse
from kdbench.models.tiny import general_packs
from kdbench.packs import load_pack


def preflight(cfg) -> None:
    pack = load_pack(cfg.pack)
    for key, value in (
        ("distill.seeds", cfg.distill.seeds),
        ("distill.algorithms", cfg.distill.algorithms),
        ("models.students", cfg.models.students),
    ):
        if not value:
            raise ConfigError(f"{key} is empty: a run needs at least one (see `kdbench config --show`)")
    check_algorithms(cfg.distill.algorithms)
    check_processes(cfg.distill.train, device_for(cfg))
    check_methods(elicitation_methods(cfg), pack)
    backend = resolve_backend_name(cfg.elicit.backend)
    tasks_for(pack, cfg)
    for algo in cfg.distill.algorithms:
        hparams_for(algo, cfg.distill.hparams.get(algo))
    for name in cfg.distill.hparams:
        check_algorithms([name])
    if backend == "openai":  # the teacher is a model name at an endpoint
        check_openai(cfg)
    else:
        check_model("teacher", "--teacher", cfg.models.teacher, cfg.models.revision)
    for s in cfg.models.students:
        check_model("student", "--students", s)
    check_home(cfg.home_path)
    refs = [cfg.models.teacher, *cfg.models.students]
    for ref in refs:  # malformed pruned:<ref>:<N>, N out of range, smollm2 without its package
        layers_of(ref, tiny_layers=cfg.tiny.teacher.num_layers)
    if cfg.models.teacher_adapt.epochs > 0 and cfg.models.teacher == TINY:
        raise ConfigError(
            "models.teacher_adapt: the tiny teacher is already trained on the pack (tiny.teacher_epochs sets how "
            "long); adaptation is for a pretrained teacher. Set models.teacher_adapt.epochs to 0, or use another "
            "teacher"
        )
    if any(needs_tiny(r) for r in refs):  # the embedded student's general corpus: every pack loads and validates
        try:
            general_packs(pack, cfg.tiny)
        except UserError as e:
            raise ConfigError(f"tiny.general_packs (the packs the embedded student is pretrained on): {e}") from None
    local = all(is_local(r) for r in refs)
    if local and not cfg.eval.public:  # nothing needs the hub: make sure nothing tries it
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    checked_retention_tasks(pack, cfg)  # after the offline switch above: public tasks cannot be had offline
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


WEIGHTS = ("*.safetensors", "pytorch_model*.bin")  # what from_pretrained loads with torch
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def _looks_like_path(ref: str) -> bool:
    """A reference that can only be a local path (a hub id is NAME or OWNER/NAME)."""
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or "\\" in ref or ref.endswith("/")


def check_model(role: str, flag: str, ref: str, revision: str | None = None) -> None:
    """A local model folder must hold a model; a hub id is checked only offline (then it must be cached).
    tiny, smollm2 and pruned:<ref>:<N> are kdbench's own references (a prune's source is checked)."""
    r = parse(ref)
    if r.kind == PRUNED and r.source is not None:
        return check_model(role, flag, r.source, revision)
    if r.kind in (TINY, SMOLLM2):
        return
    what = f"{role} {ref!r} ({flag})"
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(
                f"{what}: {path} is a file; pass a model folder (written by save_pretrained), a hub id or tiny"
            )
        missing = [
            name
            for name, globs in (("config.json", ("config.json",)), ("weights", WEIGHTS), ("tokenizer", TOKENIZER))
            if not any(any(path.glob(g)) for g in globs)
        ]
        if missing:
            raise UserError(
                f"{what}: the folder {path.resolve()} holds no model (no {', no '.join(missing)}: a model folder has "
                f"config.json, weights {' or '.join(WEIGHTS)} and its tokenizer files, as save_pretrained writes "
                "them); pass such a folder, a hub id or tiny"
            )
        return
    if _looks_like_path(ref):
        raise UserError(f"{what}: no such folder {path.resolve()}; pass a model folder, a hub id or tiny")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(ref)
    except HFValidationError:
        raise UserError(
            f"{what}: neither a folder here nor a hub id (OWNER/NAME); pass a model folder, a hub id or tiny"
        ) from None
    if offline() and not _cached(ref, revision):
        raise UserError(
            f"{what}: no folder of that name here, and this machine is offline (HF_HUB_OFFLINE=1) with no copy "
            "of that hub model in the Hugging Face cache; pass a local model folder or tiny (the embedded default), "
            "or run where the hub is reachable without HF_HUB_OFFLINE"
        )


def _cached(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)


def check_openai(cfg) -> None:
    """The openai backend: an explicit endpoint, a key for any host but this machine, a model name (not a path)."""
    from urllib.parse import urlparse

    base = cfg.elicit.openai_base_url or os.environ.get("OPENAI_BASE_URL")
    if not base:
        raise UserError(
            "--backend openai needs the endpoint: --set elicit.openai_base_url=URL (or OPENAI_BASE_URL), e.g. "
            "http://127.0.0.1:8000/v1 for a local vLLM server or https://api.openai.com/v1"
        )
    url = urlparse(base)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UserError(f"elicit.openai_base_url {base!r}: not an http(s) URL, e.g. http://127.0.0.1:8000/v1")
    if not _this_machine(url.hostname) and not api_key():
        raise UserError(
            f"--backend openai: {url.hostname} is not this machine, and no API key is set: export OPENAI_API_KEY "
            "(or KDBENCH_OPENAI_API_KEY; kdbench reads it from the environment only)"
        )
    name = cfg.elicit.openai_model or cfg.models.teacher
    flag = "elicit.openai_model" if cfg.elicit.openai_model else "--teacher"
    if name == TINY or Path(name).expanduser().exists() or _looks_like_path(name):
        kind = "the embedded model, which no endpoint serves" if name == TINY else "a local path"
        raise UserError(
            f"--backend openai asks the endpoint for its model by name, and {flag} {name!r} is {kind}: pass the "
            "name the endpoint serves with --teacher NAME or --set elicit.openai_model=NAME (a vLLM server "
            "serves a folder under its --served-model-name)"
        )


def _this_machine(host: str) -> bool:
    import ipaddress

    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_home(home: Path) -> None:
    """The home must be writable: even a fully cached run writes lock files and its MLflow database there."""
    import tempfile

    existing = home
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"the home {home} (--home): {existing} is a file; pass a folder")
    try:  # an unnamed file, gone when closed: nothing is left behind
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UserError(
            f"the home {home} (--home) is not writable ({e.strerror} in {existing}): kdbench writes caches, lock "
            "files and its MLflow database there even when every step is cached; pass a writable --home"
        ) from None
