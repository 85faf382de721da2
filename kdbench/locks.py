"""Inter-process locks for content-addressed work, so two runs started at once
never build the same artifact twice or half-write it: the second waits, then
finds the first one's result and reuses it."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from kdbench.log import get_logger

log = get_logger(__name__)


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
    in a server would stay taken until it expired). Waiters queue first come,
    first served: each holds a flock on a ticket named by its arrival time and
    takes a slot only when fewer than ``slots`` live tickets are older, so a long
    benchmark cannot starve a run started after it. A dead waiter's ticket is
    unlocked, and whoever finds it removes it.
    """
    import threading
    import time

    d = _slot_dir()
    d.mkdir(parents=True, exist_ok=True)
    n = max(1, slots)
    name = f"ticket-{time.time_ns():020d}-{os.getpid()}-{threading.get_ident()}"
    tmp = d / f".{name}"
    tfd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(tfd, fcntl.LOCK_EX)
    os.rename(tmp, d / name)  # visible only once locked: a ticket found unlocked is a dead waiter's
    told = False
    try:
        while True:
            if _live_tickets_before(d, name) < n:
                for i in range(n):
                    fd = os.open(d / f"slot-{i}.lock", os.O_RDWR | os.O_CREAT, 0o644)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        os.close(fd)
                        continue
                    _release_ticket(d / name, tfd)
                    tfd = None
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)  # who holds it, for the waiting message
                    try:
                        yield i
                    finally:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                        os.close(fd)
                    return
            if not told:  # once said, the holders need not be read again
                own = f"pid {os.getpid()}"  # this run's own tasks queueing for the slot is the plan, not news
                holders = ", ".join(sorted({_holder(d / f"slot-{i}.lock") for i in range(n)} - {"", own}))
                if holders:
                    told = True
                    log.info(
                        f"waiting for an accelerator slot: all {n} on this machine are held "
                        f"({holders}); orchestration.gpu_slots sets how many"
                    )
            time.sleep(poll)
    finally:
        if tfd is not None:
            _release_ticket(d / name, tfd)


def _live_tickets_before(d: Path, name: str) -> int:
    live = 0
    for t in (p for p in d.glob("ticket-*") if p.name < name):
        try:
            fd = os.open(t, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            t.unlink(missing_ok=True)  # its waiter died without removing it
        except BlockingIOError:
            live += 1
        finally:
            os.close(fd)
    return live


def _release_ticket(path: Path, fd: int) -> None:
    path.unlink(missing_ok=True)
    os.close(fd)


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
