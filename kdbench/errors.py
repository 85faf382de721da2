"""What kdbench raises on purpose, in two kinds the CLI treats differently.

``UserError`` (and its ``ConfigError``, ``PackError``): the input is wrong (a
pack, a config key, a flag, a model reference). The message says what, where
and what to do; the CLI prints it alone, without a traceback.

``RuntimeFailure``: the input was fine but a step failed while running (lm-eval
crashed, training diverged, a worker died, the disk filled). The CLI prints the
message and where the traceback is (the run's log file; ``--debug`` prints it).

Anything else that escapes is a bug in kdbench and keeps its full traceback.
"""

from __future__ import annotations

import difflib


class KdbenchError(Exception):
    """Base of the errors kdbench raises on purpose; its message names the file, key or step."""


class UserError(KdbenchError):
    """Bad input: a short message that says what is wrong, where, and what to do instead."""


class PackError(UserError):
    """A domain pack is missing, malformed or contaminated."""


class ConfigError(UserError):
    """A run configuration (YAML or flags) is invalid."""


class RuntimeFailure(KdbenchError):
    """A step failed while running; the cause's traceback is kept (chained) for --debug and the log."""


class NonFiniteLossError(RuntimeFailure):
    """Training produced a NaN or infinite loss; carries the step number."""

    def __init__(self, step: int, value: float, checkpoint: str | None):
        self.step = step
        self.value = value
        self.checkpoint = checkpoint
        kept = f"; the last good checkpoint is kept at {checkpoint}" if checkpoint else ""
        super().__init__(f"loss became {value} at step {step}{kept}")


def did_you_mean(name: str, options) -> str:
    """' (did you mean X?)' when one option is close to name, else ''."""
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
