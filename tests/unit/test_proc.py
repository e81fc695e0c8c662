"""Host tools run by the lab stop with it: SIGTERM to the lab ends a build's whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lab.core.errors import BuildError
from lab.core.proc import run_logged, stop_running
from tests.conftest import REPO

LAB_BUILDING = """
import sys
import threading
from pathlib import Path
import lab.cli  # installs nothing by import; main() would install the SIGTERM handler
import signal
signal.signal(signal.SIGTERM, lab.cli._on_sigterm)
from lab.core.proc import run_logged, stop_running
try:
    run_logged(["sh", "-c", "sleep 300 & echo $! > {pidfile}; wait"], artifact="t", log=Path("{log}"))
except KeyboardInterrupt:
    sys.exit(130)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose (its parent, already gone, cannot reap it yet).
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_sigterm_to_the_lab_stops_a_running_build_and_its_children(tmp_path):
    pidfile = tmp_path / "pid"
    code = LAB_BUILDING.format(pidfile=pidfile, log=tmp_path / "log")
    lab = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline, "the build never started"
        time.sleep(0.05)
    grandchild = int(pidfile.read_text())
    lab.send_signal(signal.SIGTERM)
    assert lab.wait(timeout=30) == 130
    deadline = time.monotonic() + 10
    while alive(grandchild):
        assert time.monotonic() < deadline, "a build process outlived the lab's SIGTERM"
        time.sleep(0.05)


def test_failure_carries_the_log_tail(tmp_path):
    with pytest.raises(BuildError) as info:
        run_logged(
            ["sh", "-c", "echo compiling; echo boom >&2; exit 3"], artifact="k", log=tmp_path / "l"
        )
    assert info.value.log_tail == ["compiling", "boom"]
    assert "sh exited 3" in str(info.value)


def test_a_missing_tool_is_named(tmp_path):
    with pytest.raises(BuildError, match="no-such-tool not found"):
        run_logged(["no-such-tool"], artifact="k", log=tmp_path / "l")


def test_a_relative_program_is_found_from_its_working_directory(tmp_path):
    script = tmp_path / "configure"
    script.write_text("#!/bin/sh\necho configured\n")
    script.chmod(0o755)
    run_logged(["./configure"], artifact="k", log=tmp_path / "l", cwd=tmp_path)
    assert "configured" in (tmp_path / "l").read_text()


def test_stop_running_ends_the_builds_of_other_threads(tmp_path):
    errors: list[BaseException] = []

    def build() -> None:
        try:
            run_logged(["sh", "-c", "echo started; sleep 60"], artifact="k", log=tmp_path / "l")
        except BuildError as e:
            errors.append(e)

    worker = threading.Thread(target=build)
    started = time.monotonic()
    worker.start()
    deadline = time.monotonic() + 10
    # The line the build printed, not the command line the log starts with.
    while "\nstarted\n" not in ((tmp_path / "l").read_text() if (tmp_path / "l").exists() else ""):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stop_running()
    worker.join(timeout=20)
    assert not worker.is_alive() and time.monotonic() - started < 20
    assert len(errors) == 1 and "exited" in str(errors[0])
