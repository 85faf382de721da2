"""Inter-process locks for content-addressed work, so two runs started at once
never build the same artifact twice or half-write it: the second waits, then
finds the first one's result and reuses it."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def locked(path: str | Path):
    """Hold an exclusive lock on ``<path>.lock`` (created if needed) for the block."""
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
