"""Real guests under real QEMU, the real payload over real SSH. Marked `vm`; CI runs them.

Each test also checks that the run left no QEMU process and no overlay behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.cache import Cache
from tests.conftest import REPO

pytestmark = pytest.mark.vm


def lab(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        **kwargs,
    )


def qemu_processes(marker: Path) -> list[int]:
    """PIDs whose command line mentions `marker` (each run's QEMU logs into its results dir)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(marker).encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def vm_scratch() -> set[str]:
    return {p.name for p in Cache().tmp.glob("vm-*")}


@pytest.fixture
def results(tmp_path):
    """A results root, and after the test: nothing of the run may be left running or on disk."""
    before = vm_scratch()
    root = tmp_path / "results"
    yield root
    assert qemu_processes(root) == [], "a QEMU process outlived its run"
    assert vm_scratch() - before == set(), "an overlay directory outlived its run"


def summary(root: Path) -> dict:
    return json.loads((root / "latest" / "summary.json").read_text())


def tap_lines(cell_dir: str) -> list[str]:
    return (Path(cell_dir) / "results.tap").read_text().splitlines()


def test_quick_scenario_runs_the_payload(results):
    done = lab("run", "scenarios/quick.yaml", "--results", str(results))
    assert done.returncode == 0, done.stdout + done.stderr
    s = summary(results)
    assert s["scenario"] == "quick" and s["exit_code"] == 0
    assert s["accelerator"] in ("tcg", "kvm")
    (cell,) = s["cells"]
    assert cell["verdict"] == "pass"
    assert (
        cell["counts"]["pass"] >= 8 and cell["counts"]["fail"] == 0 and cell["counts"]["error"] == 0
    )
    assert cell["boot_to_ssh_s"] > 0 and cell["wall_s"] >= cell["boot_to_ssh_s"]
    for name in ("results.tap", "console.log", "dmesg.txt", "qemu-argv.json"):
        assert (Path(cell["dir"]) / name).stat().st_size > 0, name
    lines = tap_lines(cell["dir"])
    for test in (
        "vfio_container_test.vfio_type1_iommu.container_setup",
        "vfio_pci_device_test.validate_bars",
        "vfio_pci_device_test.bar0_identification",
        "vfio_dma_mapping_test.vfio_type1v2_iommu_anonymous.dma_map_unmap",
        "vfio_pci_driver_test.vfio_type1_iommu.memcpy_success",
        "vfio_pci_driver_test.vfio_type1v2_iommu.memcpy_to_unmapped_region",
    ):
        assert any(line.startswith("ok ") and line.endswith(f" {test}") for line in lines), test
    assert any(
        "iommufd_compat_type1" in line and "# SKIP CONFIG_IOMMUFD not set" in line for line in lines
    )
    # The unmapped-IOVA DMA really went through the vIOMMU: the guest kernel logged the fault.
    assert "DMAR: [DMA Write" in (Path(cell["dir"]) / "dmesg.txt").read_text()
    assert (
        "vfio-lab: test-start vfio_pci_driver_test" in (Path(cell["dir"]) / "dmesg.txt").read_text()
    )
    assert json.loads((Path(cell["dir"]) / "qemu-argv.json").read_text())[0] == "qemu-system-x86_64"
    assert (results / "latest").resolve() == (results / s["run_id"]).resolve()
    assert "debian-stock  pass" in done.stdout


def test_failing_test_gives_exit_1_and_cleans_up(results):
    payload = REPO / "tests" / "fixtures" / "failing_payload"
    done = lab("run", "--payload", str(payload), "--results", str(results))
    assert done.returncode == 1, done.stdout + done.stderr
    (cell,) = summary(results)["cells"]
    assert cell["verdict"] == "fail"
    assert (cell["counts"]["pass"], cell["counts"]["fail"]) == (1, 1)
    lines = tap_lines(cell["dir"])
    assert "not ok 2 failing_test.ident_is_wrong_on_purpose" in lines


def test_boot_timeout_is_an_infra_error_with_the_console_tail(results, tmp_path):
    scenario = tmp_path / "slow.yaml"
    scenario.write_text("machine:\n  memory: 2G\n  boot_timeout: 2\n")
    done = lab("run", str(scenario), "--results", str(results))
    assert done.returncode == 3, done.stdout + done.stderr
    (cell,) = summary(results)["cells"]
    assert cell["verdict"] == "error"
    assert "no SSH answer within 2 s" in cell["infra_error"]
    assert "console tail" in cell["infra_error"]


def test_ctrl_c_during_boot_leaves_nothing_behind(results):
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.cli", "run", "--results", str(results)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        if "booting" in line or time.monotonic() > deadline:
            break
    time.sleep(1.0)  # well inside the boot: QEMU runs, SSH is not up yet
    assert qemu_processes(results), "QEMU should be running when Ctrl-C arrives"
    os.kill(proc.pid, signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    s = summary(results)
    assert s["interrupted"] is True and s["exit_code"] == 130


def test_guest_crash_is_an_error_with_the_console_tail(results):
    payload = REPO / "tests" / "fixtures" / "crash_payload"
    start = time.monotonic()
    done = lab("run", "--payload", str(payload), "--results", str(results))
    assert done.returncode == 1, done.stdout + done.stderr
    (cell,) = summary(results)["cells"]
    assert cell["verdict"] == "error"
    problems = "\n".join(cell["problems"])
    assert "QEMU exited during the payload" in problems
    assert "! Kernel panic - not syncing: sysrq triggered crash" in problems
    # panic=-1 and -no-reboot: QEMU exits at the panic, no timeout is waited for.
    assert time.monotonic() - start < 120
