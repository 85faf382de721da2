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


def _slot_dir() -> Path:
    import tempfile

    return Path(os.environ.get("KDBENCH_SLOTS_DIR") or Path(tempfile.gettempdir()) / f"kdbench-slots-{os.getuid()}")


@contextmanager
def gpu_slot(slots: int, poll: float = 0.5):
    """Hold one of ``slots`` accelerator slots shared by every kdbench process on this machine.

    Slots are lock files held with flock: the kernel releases them when a process
    dies, so a crashed or SIGKILLed run never leaves a slot taken (a lease kept
    in a server would stay taken until it expired).
    """
    import time

    d = _slot_dir()
    d.mkdir(parents=True, exist_ok=True)
    while True:
        for i in range(max(1, slots)):
            fd = os.open(d / f"slot-{i}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield i
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        time.sleep(poll)
