"""The ``kdbench`` logger: what kdbench says, on the console and in Prefect's run logs.

Library modules log through ``get_logger(__name__)`` (children of ``kdbench``),
never ``print``. The CLI calls :func:`setup` once: messages go to stdout as
``[kdbench] ...`` (``[kdbench] warning: ...`` from WARNING up), as users have
always seen them, and, with a home, every record with its traceback goes to
``<home>/logs/kdbench.log``. flows/ adds a handler that sends the same records
to the Prefect run they happen in, so a team watching a scheduled run in the
Prefect UI reads them there.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

ROOT = "kdbench"


class _Stdout(logging.StreamHandler):
    """A handler on whatever sys.stdout is at the time of each record (pytest's capture swaps it)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # the base class assigns it; stdout is always looked up
        pass


class _Console(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        if record.exc_info and logging.getLogger(ROOT).isEnabledFor(logging.DEBUG):
            text += "\n" + self.formatException(record.exc_info)
        return f"[kdbench] {text}"


def get_logger(name: str = ROOT) -> logging.Logger:
    """The logger of a kdbench module (``get_logger(__name__)``)."""
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")


def setup(*, debug: bool = False, home: Path | None = None) -> Path | None:
    """Console output on stdout (and a log file under ``home``) for the ``kdbench`` logger; returns the file's path.

    Safe to call again (a later call with a home adds the file)."""
    root = logging.getLogger(ROOT)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
    if not any(getattr(h, "_kdbench", "") == "console" for h in root.handlers):
        console = _Stdout()
        console.setFormatter(_Console())
        console._kdbench = "console"  # type: ignore[attr-defined]
        root.addHandler(console)
    if home is None:
        return None
    path = Path(home) / "logs" / "kdbench.log"
    if not any(getattr(h, "_kdbench", "") == str(path) for h in root.handlers):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path, encoding="utf-8")
        except OSError:  # a read-only home: the console still has everything
            return None
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._kdbench = str(path)  # type: ignore[attr-defined]
        root.addHandler(handler)
    return path
