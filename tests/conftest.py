"""Shared test helpers: paths, golden files with a regenerate switch, and a kernel log
of their own for the guest code the tests run on the host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden"


def lab(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "lab", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        **kwargs,
    )


@pytest.fixture
def golden():
    """Compare text with tests/golden/NAME; VFIO_LAB_REGEN_GOLDEN=1 rewrites the file instead."""

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if os.environ.get("VFIO_LAB_REGEN_GOLDEN") == "1":
            path.write_text(text)
        assert path.exists(), f"{path} missing; run with VFIO_LAB_REGEN_GOLDEN=1 to create it"
        assert text == path.read_text()

    return check


@pytest.fixture(autouse=True)
def kmsg(tmp_path_factory, monkeypatch):
    """The file the guest code's kernel-log markers go to (vfiolib.kmsg), never the
    host's /dev/kmsg: set in the environment, so the pytest plugin and the C suites'
    runner that the tests start as processes inherit it."""
    path = tmp_path_factory.mktemp("kmsg") / "kmsg"  # apart: tests list their tmp_path
    path.touch()  # as /dev/kmsg exists: the markers never create their file
    monkeypatch.setenv("VFIO_LAB_KMSG", str(path))
    return path
