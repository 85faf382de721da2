"""Stop what a ``kdbench run`` started when it dies without stopping it itself (SIGKILL, the OOM killer).

Prefect's local mode starts a temporary API server (a uvicorn process of ~200 MB) and stops it at exit; a
SIGKILLed CLI never gets there, the server runs on for good, and the next run starts another. So the CLI
starts this watchdog: a small process (this module run with ``python -m``, no kdbench imports) reading a pipe
whose write end only the CLI holds. Meanwhile it notes the CLI's descendants from /proc every second. When
the CLI dies, by any means, the kernel closes the pipe: the watchdog reads EOF (or sees the CLI's pid gone,
should a forked child still hold the pipe), terminates the descendants it saw that still run (the same pid
with the same start time; SIGKILL after 5 s), and exits.

The watchdog runs in its own session, so Ctrl-C in a terminal reaches the CLI as before (whose process group
is left alone) and not the watchdog, which outlives it to clean up. Linux only; elsewhere start() does nothing.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

INTERVAL = 1.0  # seconds between looks at the CLI's descendants
GRACE = 5.0  # seconds between SIGTERM and SIGKILL
_held: list[int] = []  # the pipe's write end, open for the life of the CLI process
_ROOT = str(Path(__file__).resolve().parents[1])  # where this kdbench is imported from: the watchdog runs the same


def start(log_file: Path | None = None) -> subprocess.Popen | None:
    """Start a watchdog for this process; None where /proc is missing (not Linux)."""
    if not sys.platform.startswith("linux") or not Path("/proc/self/stat").exists():
        return None
    read, write = os.pipe()  # not inherited by children started with exec (Prefect's server, workers)
    args = [sys.executable, "-m", "kdbench.watchdog", str(os.getpid())] + ([str(log_file)] if log_file else [])
    try:
        proc = subprocess.Popen(
            args,
            stdin=read,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([_ROOT, os.environ.get("PYTHONPATH", "")])},
        )
    finally:
        os.close(read)
    _held.append(write)
    return proc


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time, state) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # after "pid (comm)": state, ppid, ..., starttime (22nd overall)
    return int(fields[1]), int(fields[19]), fields[0]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(pid: int) -> dict[int, int]:
    """{pid: start time} of every process below ``pid``."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[0], []).append(int(entry.name))
            starts[int(entry.name)] = st[1]
    out, todo = {}, list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out[p] = starts[p]
        todo += children.get(p, [])
    return out


def _alive(pid: int, started: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] == started and st[2] != "Z"


def watch(pid: int, log_file: str | None = None) -> None:
    """Follow ``pid`` (the CLI) until it dies, then stop the descendants it left running."""
    for sig in (signal.SIGINT, signal.SIGHUP):  # a terminal's Ctrl-C or hang-up is for the CLI
        signal.signal(sig, signal.SIG_IGN)
    st = _stat(pid)
    if st is None:
        return
    started = st[1]
    seen: dict[int, int] = {}  # pid -> start time of each descendant seen
    names: dict[int, str] = {}
    while True:
        ready, _, _ = select.select([0], [], [], INTERVAL)
        if ready and not os.read(0, 4096):
            break  # EOF: the CLI is gone
        now = _stat(pid)
        if now is None or now[1] != started or now[2] == "Z":
            break
        for p, s in descendants(pid).items():
            if p != os.getpid() and p not in seen:
                seen[p], names[p] = s, _cmdline(p)[:200]
    left = {p: s for p, s in seen.items() if _alive(p, s)}
    for p in left:
        _signal(p, signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    while time.monotonic() < deadline and any(_alive(p, s) for p, s in left.items()):
        time.sleep(0.1)
    for p, s in left.items():
        if _alive(p, s):
            _signal(p, signal.SIGKILL)
    if left and log_file:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            with open(log_file, "a", encoding="utf-8") as f:
                for p in left:
                    f.write(
                        f"{stamp} INFO kdbench.watchdog: kdbench run {pid} ended; stopped its process {p}: {names[p]}\n"
                    )
        except OSError:
            pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
