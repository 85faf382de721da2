"""User-facing errors: short, naming the file, key or line and what to do."""


class KdbenchError(Exception):
    """An error caused by user input (a pack, a config, a flag).

    The CLI prints its message without a traceback, so the message must say
    what is wrong, where, and what exists or what to do instead.
    """


class PackError(KdbenchError):
    """A domain pack is missing, malformed or contaminated."""


class ConfigError(KdbenchError):
    """A run configuration (YAML or flags) is invalid."""


class NonFiniteLossError(KdbenchError):
    """Training produced a NaN or infinite loss; carries the step number."""

    def __init__(self, step: int, value: float, checkpoint: str | None):
        self.step = step
        self.value = value
        self.checkpoint = checkpoint
        kept = f"; the last good checkpoint is kept at {checkpoint}" if checkpoint else ""
        super().__init__(f"loss became {value} at step {step}{kept}")


def did_you_mean(name: str, options) -> str:
    """' (did you mean X?)' when one option is close to name, else ''."""
    import difflib

    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
