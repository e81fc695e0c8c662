"""What every real-VM test shares: finding lab QEMUs and scratch directories, and a results
root after which nothing of the run may be left running or on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.core.cache import Cache


def lab_qemus() -> set[int]:
    """PIDs of lab QEMU processes (their -name carries process=vfio-lab)."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"qemu-system-x86_64") and any(
                b"process=vfio-lab" in a for a in argv
            ):
                pids.add(int(proc.name))
    return pids


def vm_scratch() -> set[str]:
    """Everything under the cache's tmp/: overlays, sockets, shell sessions, probes."""
    return {p.name for p in Cache().tmp.iterdir()}


@pytest.fixture
def results(tmp_path):
    """A results root, and after the test: nothing of the run may be left running or on disk."""
    scratch, qemus = vm_scratch(), lab_qemus()
    root = tmp_path / "results"
    yield root
    assert lab_qemus() - qemus == set(), "a QEMU process outlived its run"
    assert vm_scratch() - scratch == set(), (
        "a scratch directory (overlay, sockets) outlived its run"
    )


def summary(root: Path) -> dict:
    return json.loads((root / "latest" / "summary.json").read_text())
