"""What every real-VM test shares: finding lab QEMUs and scratch directories, and a results
root after which nothing of the run may be left running or on disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from lab.core.cache import Cache, _read_owner, process_start
from tests.conftest import REPO

# Set for the length of a test (the `results` fixture): every lab it starts, and every
# QEMU those start, inherits it, so that other lab runs on the same host are not counted.
TAG = "VFIO_LAB_TEST_TAG"


def _environ(pid: str) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or another user's
        return []


def _ours(pid: str) -> bool:
    tag = os.environ.get(TAG)
    return tag is None or f"{TAG}={tag}".encode() in _environ(pid)


def lab_qemus() -> set[int]:
    """PIDs of lab QEMU processes (any arch's emulator, whose -name carries
    process=vfio-lab) that this test started, or all of them outside a test that tags its
    runs."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                os.path.basename(argv[0]).startswith(b"qemu-system-")
                and any(b"process=vfio-lab" in a for a in argv)
                and _ours(proc.name)
            ):
                pids.add(int(proc.name))
    return pids


def _live_owner(directory: Path) -> str | None:
    """The pid of the live process that owns a scratch directory, if any."""
    owner = _read_owner(directory)
    if owner is None or process_start(owner[0]) != owner[1]:
        return None
    return str(owner[0])


def vm_scratch(cache: Cache | None = None) -> set[str]:
    """Everything under the cache's tmp/ and its sockets' directory (overlays, sockets, shell
    sessions, probes) but what a live process outside this test owns: another lab run's
    scratch is not ours. The cache is the lab's (VFIO_LAB_CACHE) unless one is given."""
    mine = set()
    cache = cache or Cache()
    for path in [*cache.tmp.iterdir(), *cache.socket_dirs()]:
        owner = _live_owner(path)
        if owner is None or _ours(owner):
            mine.add(path.name)
    return mine


@pytest.fixture
def results(tmp_path, monkeypatch):
    """A results root, and after the test: nothing of the run may be left running or on disk."""
    monkeypatch.setenv(TAG, uuid.uuid4().hex)
    scratch, qemus = vm_scratch(), lab_qemus()
    root = tmp_path / "results"
    yield root
    assert lab_qemus() - qemus == set(), "a QEMU process outlived its run"
    assert vm_scratch() - scratch == set(), (
        "a scratch directory (overlay, sockets) outlived its run"
    )


def summary(root: Path) -> dict:
    return json.loads((root / "latest" / "summary.json").read_text())


def copy_source(dest: Path) -> Path:
    """The project as git has it (committed or not, but nothing ignored): what a source
    tree of the project ships."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest
