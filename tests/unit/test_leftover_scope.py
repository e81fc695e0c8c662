"""The real-VM tests' leftover check counts only what its own test started: another lab
run on the same host (a QEMU, a scratch directory it owns) is not a leftover."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from lab.core.cache import OWNER, Cache, process_start
from tests.integration import conftest as vm


@pytest.fixture
def qemu_like():
    """Start processes that look like lab QEMUs (argv[0] and -name), with an environment."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str], binary: str = "/usr/bin/qemu-system-x86_64") -> int:
        argv = [binary, "-c", "import time; time.sleep(60)"]
        procs.append(
            subprocess.Popen([*argv, "process=vfio-lab"], executable=sys.executable, env=env)
        )
        pid = procs[-1].pid
        # /proc has been seen to show the new argv only after Popen returned (busy host).
        deadline = time.monotonic() + 10
        while b"process=vfio-lab" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, f"pid {pid} never showed its argv"
            time.sleep(0.01)
        return pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture
def foreign_qemu(qemu_like):
    """Another run's lab QEMU: no tag in its environment."""
    return qemu_like({k: v for k, v in os.environ.items() if k != vm.TAG})


def test_another_runs_qemu_is_not_this_tests(monkeypatch, foreign_qemu):
    monkeypatch.delenv(vm.TAG, raising=False)
    seen = vm.lab_qemus()
    assert foreign_qemu in seen, (foreign_qemu, seen)  # untagged, everything counts
    monkeypatch.setenv(vm.TAG, uuid.uuid4().hex)
    seen = vm.lab_qemus()
    assert foreign_qemu not in seen, (foreign_qemu, seen, vm._environ(str(foreign_qemu)))


def test_another_arch_s_qemu_counts_too(monkeypatch, qemu_like):
    # The aarch64 root filesystem's second stage boots qemu-system-aarch64.
    monkeypatch.setenv(vm.TAG, uuid.uuid4().hex)
    arm = qemu_like(dict(os.environ), "/usr/bin/qemu-system-aarch64")
    assert arm in vm.lab_qemus()


def test_a_cache_of_the_test_s_own_is_checked_for_leftovers(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("VFIO_LAB_CACHE", str(tmp_path / "lab"))
    own = Cache(tmp_path / "own")
    (own.tmp / "left").mkdir()
    assert vm.vm_scratch(own) == {"left"} and vm.vm_scratch() == set()


def test_another_live_runs_scratch_is_not_this_tests(
    monkeypatch, tmp_path, qemu_like, foreign_qemu
):
    monkeypatch.setenv("VFIO_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(vm.TAG, uuid.uuid4().hex)
    tagged = qemu_like(dict(os.environ))
    owners = {"theirs": foreign_qemu, "mine": tagged, "orphan": 999999999}
    for name, pid in owners.items():
        (Cache().tmp / name).mkdir()
        start = process_start(pid) or 1  # the orphan's pid is no process
        (Cache().tmp / name / OWNER).write_text(f'{{"pid": {pid}, "start": {start}}}\n')
    (Cache().tmp / "unowned").mkdir()
    assert vm.vm_scratch() == {"mine", "orphan", "unowned"}
