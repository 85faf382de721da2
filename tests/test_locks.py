"""Accelerator slots: machine-wide, first come first served, and never left taken by a dead process."""

import os
import signal
import subprocess
import sys
import threading
import time

from kdbench.locks import gpu_slot


def test_waiters_get_the_slot_in_arrival_order(tmp_path, monkeypatch, capsys):
    """Threads of one run queue in order, without telling the user (that queueing is the plan)."""
    monkeypatch.setenv("KDBENCH_SLOTS_DIR", str(tmp_path))
    order: list[str] = []
    release = threading.Event()

    def holder():
        with gpu_slot(1, poll=0.02):
            order.append("holder")
            release.wait(10)

    def waiter(name):
        with gpu_slot(1, poll=0.02):
            order.append(name)
            time.sleep(0.1)  # others keep polling meanwhile

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    while not order:
        time.sleep(0.01)
    for name in ["first", "second", "third"]:
        t = threading.Thread(target=waiter, args=(name,))
        t.start()
        threads.append(t)
        time.sleep(0.1)  # arrival order is the order of the tickets
    release.set()
    for t in threads:
        t.join(20)
    assert order == ["holder", "first", "second", "third"]
    assert "waiting for an accelerator slot" not in capsys.readouterr().out
    assert not list(tmp_path.glob("ticket-*")), "every ticket is removed once its waiter got a slot"


def test_a_dead_waiters_ticket_does_not_block_the_queue(tmp_path, monkeypatch):
    monkeypatch.setenv("KDBENCH_SLOTS_DIR", str(tmp_path))
    (tmp_path / "ticket-00000000000000000001-1-1").touch()  # older than any live waiter, and unlocked
    with gpu_slot(1, poll=0.02) as slot:
        assert slot == 0
    assert not list(tmp_path.glob("ticket-*"))


def test_a_sigkilled_holder_frees_its_slot(tmp_path, capsys):
    env = {**os.environ, "KDBENCH_SLOTS_DIR": str(tmp_path)}
    code = (
        "from kdbench.locks import gpu_slot\nimport time\n"
        "with gpu_slot(1):\n    print('held', flush=True)\n    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    os.environ["KDBENCH_SLOTS_DIR"] = str(tmp_path)
    try:
        got = []
        t = threading.Thread(target=lambda: got.append(gpu_slot(1, poll=0.02).__enter__()))
        t.start()
        time.sleep(0.5)
        assert not got, "the slot is held by the other process"
        assert f"held (pid {proc.pid})" in capsys.readouterr().out  # the waiter says who holds it
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        t.join(10)
        assert got == [0]
    finally:
        del os.environ["KDBENCH_SLOTS_DIR"]
        proc.kill()
