"""The QEMU process's lifecycle with fake QEMU binaries: launch errors carry the exit code,
the argv and the log tail; shutdown goes quit -> SIGTERM -> SIGKILL and says so; a second
interrupt while stopping still leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from lab.core.errors import LaunchError
from lab.vm.machine import Machine, wait_or_kill


def fake_qemu(tmp_path, body: str):
    path = tmp_path / "fake-qemu"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def machine(tmp_path, qemu) -> Machine:
    return Machine(
        [str(qemu), "-name", "x"],
        tmp_path / "qmp.sock",
        tmp_path / "qemu.log",
        tmp_path / "console.log",
    )


def test_qemu_dying_at_start_raises_launch_error(tmp_path):
    qemu = fake_qemu(
        tmp_path,
        "sleep 0.5; echo \"qemu-system-x86_64: -device edu: Bus 'pcie.0' is full\" >&2; exit 1",
    )
    # A socket file nobody listens on: qemu.qmp's ConnectError (not an OSError) while
    # QEMU starts is retried, and QEMU's death still ends it as a LaunchError.
    (tmp_path / "qmp.sock").write_text("")
    with pytest.raises(LaunchError) as info, machine(tmp_path, qemu):
        pass
    e = info.value
    assert e.exitcode == 1
    assert e.argv[0] == str(qemu)
    assert any("Bus 'pcie.0' is full" in line for line in e.log_tail)
    assert "exit code 1" in str(e)
    assert not (tmp_path / "qmp.sock").exists()


def stubborn(ignore_term: bool) -> subprocess.Popen[bytes]:
    """A process that ignores SIGTERM (or not) and would otherwise live a minute."""
    code = "import signal, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print('ready', flush=True)\ntime.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


@pytest.mark.parametrize(("ignore_term", "needed"), [(False, "SIGTERM"), (True, "SIGKILL")])
def test_a_process_that_does_not_quit_gets_signals_in_order(ignore_term, needed):
    proc = stubborn(ignore_term)
    assert wait_or_kill(proc, timeout=0.2) == needed
    assert proc.returncode == -getattr(signal, needed)


def test_a_process_that_ends_by_itself_needs_no_signal():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    assert wait_or_kill(proc, timeout=10) is None


def test_shutdown_of_a_qemu_that_already_died_is_reported(tmp_path):
    m = machine(tmp_path, "unused")
    m.proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    m.proc.wait()
    m.shutdown()
    assert m.abnormal == "QEMU had exited on its own (exit code 3)"


def test_shutdown_that_needed_signals_is_reported(tmp_path):
    m = machine(tmp_path, "unused")
    m.proc = stubborn(ignore_term=False)
    m.shutdown(timeout=0.2)  # no QMP: `quit` cannot be sent, so it takes SIGTERM
    assert m.abnormal == "QEMU did not quit within 0.2 s; stopped with SIGTERM"


def test_second_interrupt_while_stopping_still_kills_qemu(tmp_path):
    m = machine(tmp_path, "unused")
    proc = m.proc = stubborn(ignore_term=True)
    # The "second Ctrl-C" arrives while shutdown waits for the stubborn process.
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        m.shutdown(timeout=30)
    timer.cancel()
    assert time.monotonic() - started < 10
    assert proc.poll() is not None, "QEMU outlived the second interrupt"
