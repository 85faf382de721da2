"""Every MLflow tag, role and metric name kdbench writes and its reports read, in one place.

Runs carry tags ``kdbench.<name>``; the report reads them back as columns named
``<name>`` (the prefix removed). Scores are ``<task>.<metric>``; gap metrics
``<task>.<metric>.<gap>``; costs ``cost.<what>``.
"""

from __future__ import annotations

PREFIX = "kdbench."

# tag names (columns in the report's run table)
PACK = "pack"
PACK_VERSION = "pack_version"
PACK_DATA_HASH = "pack_data_hash"
ROLE = "role"
TEACHER = "teacher"
STUDENT = "student"
ALGORITHM = "algorithm"
SEED = "seed"
DATA_HASH = "data_hash"
RUN_KEY = "run_key"
CODE_VERSION = "code_version"
RESUMED = "resumed"
ERROR = "error"
FAILED_STEP = "failed_step"
LAST_CHECKPOINT = "last_checkpoint"
TEACHER_RUN = "teacher_run"
ELICITATION_RUN = "elicitation_run"
BEFORE_RUN = "before_run"
MODEL_DIR = "model_dir"

# values of the role tag
ROLE_TEACHER = "teacher"
ROLE_BEFORE = "student_before"
ROLE_AFTER = "student_after"
ROLE_ELICITATION = "elicitation"
EVAL_ROLES = (ROLE_TEACHER, ROLE_BEFORE, ROLE_AFTER)
ROLES = (*EVAL_ROLES, ROLE_ELICITATION)

# gap metrics, suffixes of <task>.<metric>
GAP = "gap"
GAP_CLOSED = "gap_closed"
RETENTION = "retention"
CHANCE_NORM = "chance_norm"
GAPS = (GAP, GAP_CLOSED, RETENTION)

# costs of a distilled student
COST_TEACHER_TOKENS = "cost.teacher_tokens"
COST_TEACHER_SECONDS = "cost.teacher_seconds"
COST_TRAIN_TOKENS = "cost.train_tokens"
COST_TRAIN_SECONDS = "cost.train_seconds"
COST_WALL_SECONDS = "cost.wall_seconds"
COST_CPU_SECONDS = "cost.cpu_seconds"
COST_GPU_SECONDS = "cost.gpu_seconds"
COST_PEAK_MEM_MB = "cost.peak_mem_mb"
COST_TOKENS_PER_S = "cost.tokens_per_s"
COST_EVAL_SECONDS = "cost.eval_seconds"
COSTS = (
    COST_TEACHER_TOKENS,
    COST_TEACHER_SECONDS,
    COST_TRAIN_TOKENS,
    COST_TRAIN_SECONDS,
    COST_WALL_SECONDS,
    COST_CPU_SECONDS,
    COST_GPU_SECONDS,
    COST_PEAK_MEM_MB,
    COST_TOKENS_PER_S,
    COST_EVAL_SECONDS,
)

# forgetting: scores on retention tasks outside the pack (other packs' MC tasks, or public lm-eval tasks),
# logged on student_before and student_after runs as retention.<task>.<metric>; student_after runs also log
# retention.<task>.<metric>.delta = after - before, and retention.mean_delta over the retention tasks'
# headline metrics (negative: the student forgot)
RETENTION_PREFIX = "retention."
RETENTION_DELTA = "delta"
RETENTION_MEAN_DELTA = "retention.mean_delta"

# other metrics
EVAL_SECONDS = "eval.seconds"
FINAL_LOSS = "train.final_loss"
TRAIN = "train."  # prefix of the training curve (train.loss, train.lr, train.<algorithm's logs>)


def tag(name: str) -> str:
    """The MLflow tag key of a tag name: 'pack' -> 'kdbench.pack'."""
    return PREFIX + name


def metric(task: str, name: str, suffix: str | None = None) -> str:
    """Stable metric names: '<task>.<metric>' and '<task>.<metric>.<suffix>'."""
    return f"{task}.{name}" + (f".{suffix}" if suffix else "")


def retention(task: str, name: str, suffix: str | None = None) -> str:
    """'retention.<task>.<metric>' (and '.<suffix>'): a score on a task outside the pack."""
    return RETENTION_PREFIX + metric(task, name, suffix)
