"""Run configuration: typed, YAML in, resolved config out.

Precedence: defaults < run YAML (``--config``) < command-line flags. The
resolved config is logged to MLflow as an artifact with every run. Algorithm
hyperparameters live in :mod:`kdbench.distill.config`, keyed by algorithm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kdbench.errors import ConfigError, did_you_mean

TINY = "tiny"  # model reference meaning "the embedded default, built locally for the pack"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TinyModelSpec(_Strict):
    """A small Llama-style architecture for the embedded default."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int


class TinyConfig(_Strict):
    """How the embedded default builds its tokenizer, teacher and student."""

    vocab_size: int = 2048
    max_positions: int = 256
    teacher: TinyModelSpec = TinyModelSpec(hidden_size=192, num_layers=4, num_heads=4, intermediate_size=512)
    student: TinyModelSpec = TinyModelSpec(hidden_size=96, num_layers=2, num_heads=4, intermediate_size=256)
    teacher_epochs: float = 10.0
    teacher_lr: float = 2e-3
    teacher_batch_size: int = 16
    teacher_weight_decay: float = 0.0
    teacher_cues: int = 4  # noisy cue prompts per fact in the teacher's curriculum (see models/tiny.py)
    seed: int = 1234


class ModelsConfig(_Strict):
    teacher: str = TINY
    students: list[str] = [TINY]
    revision: str | None = None
    trust_remote_code: bool = False  # off unless the user turns it on (DESIGN.md)
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"


class ElicitConfig(_Strict):
    methods: list[str] = ["labeling"]
    backend: Literal["auto", "hf", "vllm", "openai"] = "auto"
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    batch_size: int = 32
    limit: int | None = None  # use only the first N seeds (tests, quick looks)
    rationale: bool = False  # labeling: ask for a chain of thought before the answer
    expansion_per_topic: int = 8  # new inputs the teacher writes per topic (self-instruct style)
    expansion_demos: int = 3  # seed demonstrations shown per request
    expansion_temperature: float = 0.8
    curation_per_topic: int = 6  # inputs written from the pack's topics and description alone
    curation_documents_per_topic: int = 2  # inputs written from one of the topic's knowledge documents each
    dedup_rouge: float = 0.7  # a new input this close (ROUGE-L F1) to an existing one is a near-duplicate
    judge: Literal["auto", "likelihood", "prompt"] = "auto"  # how the teacher judges answers
    self_knowledge_samples: int = 2  # student samples per seed
    self_knowledge_temperature: float = 0.8
    self_knowledge_margin: float = 1.0  # keep a student answer within this many nats/token of the teacher's own
    # sft on the teacher's labels before the student samples (ReST-style). auto: the epochs of
    # distill.train for the embedded tiny student, which starts untrained; 0 for any other student
    self_knowledge_warmup_epochs: float | Literal["auto"] = "auto"
    feature_topk: int = 64  # teacher log-probs kept per token by the feature method
    vllm_python: str | None = None  # Python of the environment with vLLM (default: .venv-vllm, see backends)
    openai_base_url: str | None = None
    openai_model: str | None = None
    openai_concurrency: int = 4


class TrainConfig(_Strict):
    """Shared by every algorithm; per-algorithm knobs live in ``DistillConfig.hparams``."""

    epochs: float = 24.0  # tiny students on a few hundred examples need many passes
    max_steps: int | None = None
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    max_length: int = 192
    grad_clip: float = 1.0
    save_every: int = 100
    log_every: int = 10
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32


class DistillConfig(_Strict):
    algorithms: list[str] = ["sft", "fkl"]
    seeds: list[int] = [0, 1]
    train: TrainConfig = TrainConfig()
    hparams: dict[str, dict[str, Any]] = {}  # algorithm -> overrides of its typed defaults
    # where white-box divergences get teacher logits: the feature method's top-k cache when the
    # dataset has one (auto), always the teacher in memory (online), or only the cache (topk)
    teacher_logits: Literal["auto", "online", "topk"] = "auto"


class EvalConfig(_Strict):
    tasks: list[str] | None = None  # default: every local task of the pack
    public: bool = False  # also run the pack's public_tasks (needs hub access)
    limit: int | None = None
    batch_size: int = 32
    max_gen_toks: int = 48
    apply_chat_template: Literal["auto", "yes", "no"] = "auto"
    samples_per_task: int = 5  # generations kept for the report


class TrackingConfig(_Strict):
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else SQLite under home
    experiment_prefix: str = "kdbench"


class OrchestrationConfig(_Strict):
    gpu_slots: int | None = None  # heavy tasks at once (default: the number of GPUs, 1 on CPU)


class RunConfig(_Strict):
    pack: str
    home: str = ".kdbench"  # caches, checkpoints, Prefect results, the SQLite tracking DB
    report_dir: str = "reports/leaderboards"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tiny: TinyConfig = TinyConfig()
    models: ModelsConfig = ModelsConfig()
    elicit: ElicitConfig = ElicitConfig()
    distill: DistillConfig = DistillConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()

    @property
    def home_path(self) -> Path:
        return Path(self.home).resolve()


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _describe(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parent = RunConfig
            for p in err["loc"][:-1]:
                field = parent.model_fields.get(str(p)) if isinstance(parent, type) else None
                parent = field.annotation if field is not None else None
            options = parent.model_fields if isinstance(parent, type) and issubclass(parent, BaseModel) else []
            lines.append(f"{source}: key {key}: unknown key{did_you_mean(str(err['loc'][-1]), options)}")
        else:
            lines.append(f"{source}: key {key}: {'missing required key' if err['type'] == 'missing' else err['msg']}")
    return "\n  ".join(lines)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> RunConfig:
    """Defaults, then the YAML file, then overrides (from flags): a validated RunConfig."""
    raw: dict = {}
    source = "flags"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise ConfigError(f"{p}{f':line {mark.line + 1}' if mark else ''}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: must be a mapping of keys (pack, models, distill, ...)")
    merged = _merge(raw, overrides or {})
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError("invalid run config:\n  " + _describe(e, source)) from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def device_for(cfg: RunConfig) -> str:
    import torch

    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but no CUDA device is visible; use --device cpu or auto")
    return cfg.device


__all__ = ["TINY", "RunConfig", "load_config", "dump_config", "device_for", "Field"]
