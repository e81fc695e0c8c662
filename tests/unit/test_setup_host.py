"""scripts/setup-host.sh's options, run against fake package tools: what each installs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lab.model.arches import ARCHES
from tests.conftest import REPO

ARM = ARCHES["aarch64"]
ARM64_PACKAGES = {ARM.qemu_package, f"gcc-{ARM.toolchain}"}

# Nothing is installed, apt's lists know the stock kernel, gitlab-ci-local is the pinned
# one; apt-get only says what it was asked.
FAKES = {
    "dpkg-query": "exit 1",
    "apt-cache": 'echo "  Candidate: 6.1.0-50"',
    "apt-get": 'echo "$*" >> "$APT_LOG"',
    "sudo": 'exec "$@"',
    "npm": "exit 0",
    "gitlab-ci-local": "echo 4.73.0",
}


@pytest.fixture
def setup_host(tmp_path: Path):
    """Runs the script with an option; returns the packages it asked apt-get to install."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "apt.log"

    def run(*options: str) -> set[str]:
        log.write_text("")
        env = dict(
            os.environ,
            PATH=f"{bin_dir}:{os.environ['PATH']}",
            APT_LOG=str(log),
            SUDO_USER="root",  # the lab's user: root needs no subordinate ids or group
        )
        script = REPO / "scripts" / "setup-host.sh"
        subprocess.run([script, *options], env=env, check=True, capture_output=True)
        installs = [line.split() for line in log.read_text().splitlines()]
        installs = [words[1:] for words in installs if words[0] == "install"]
        assert len(installs) == 1, log.read_text()
        return {word for word in installs[0] if not word.startswith("-")}

    return run


def test_the_suite_s_setup_installs_what_aarch64_guests_need(setup_host) -> None:
    # The suite boots an aarch64 guest (tests/integration/test_foreign_rootfs.py).
    installed = setup_host("--test")
    assert installed >= ARM64_PACKAGES
    assert {"chromium", "ninja-build", "qemu-system-x86"} <= installed


def test_arm64_installs_the_emulator_and_cross_compiler_alone(setup_host) -> None:
    installed = setup_host("--arm64")
    assert installed >= ARM64_PACKAGES and "chromium" not in installed
    assert not ARM64_PACKAGES & setup_host()
