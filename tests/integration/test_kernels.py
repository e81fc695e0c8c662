"""Kernels from source, for real: the Debian source package, merge_config.sh, builds, boots.

Marked `vm`: they need the network (Debian's archive) and, for the matrix test, build
two kernels (about 7 min cold on 2 cores, much less with a warm ccache) and boot them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.vm


def lab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )


def test_impossible_combination_fails_before_any_boot(tmp_path):
    scenario = tmp_path / "impossible.yaml"
    scenario.write_text(
        "kernels: [debian:7.2]\nfragments: [iommufd]\n"
        "config:\n  IOMMUFD_VFIO_CONTAINER: [y]\n  VFIO_CONTAINER: [y]\n"
    )
    done = lab("run", str(scenario), "--results", str(tmp_path / "results"))
    assert done.returncode == 3, done.stdout + done.stderr
    (cell,) = json.loads((tmp_path / "results" / "latest" / "summary.json").read_text())["cells"]
    assert (
        "CONFIG_IOMMUFD_VFIO_CONTAINER: asked y, got n (depends on VFIO_GROUP && !VFIO_CONTAINER)"
        in cell["infra_error"]
    )
    assert cell["boot_to_ssh_s"] is None
    assert json.loads((Path(cell["dir"]) / "qemu-argv.json").read_text()) == []  # nothing booted


def test_option_unknown_to_the_tree_is_exit_2_with_its_line(tmp_path):
    scenario = tmp_path / "typo.yaml"
    scenario.write_text("kernels: [debian:7.2]\nconfig:\n  IOMMUFD_VFIO_CONTAINR: [y]\n")
    done = lab("run", str(scenario), "--results", str(tmp_path / "results"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert (
        f"{scenario}:3: config.IOMMUFD_VFIO_CONTAINR: IOMMUFD_VFIO_CONTAINR is not an option of linux-source-7.2="
        in done.stderr
    )
