"""The lab's own QEMU and its tweaked edu, for real: built from Debian's source with the
lab's patch, booted with a 1 GiB RAM BAR, and the tests only that BAR makes possible.

The smallest setup that proves it: the edu-bigbar scenario's IOMMUFD_VFIO_CONTAINER=n
cell (VFIO's own container maps MMIO), and only the tests about the big BAR.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from lab.artifacts import qemu
from lab.core.cache import Cache
from tests.conftest import REPO, lab

pytestmark = pytest.mark.vm

CELL = "7.2-iommufd_vfio_container=n"
TESTS = "vfio_dma_mapping_mmio_test or vfio_pci_p2p_test or vfio_pci_dmabuf_test"


@pytest.fixture(scope="module")
def bigbar_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bigbar") / "results"
    done = lab("run", "edu-bigbar", "--only", CELL, "-k", TESTS, "--results", str(root))
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((root / "latest" / "summary.json").read_text())


def records(cell: dict) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads((Path(cell["dir"]) / "tests.json").read_text())}


def diags(record: dict) -> dict[str, str]:
    return dict(d.split(": ", 1) for d in record["diagnostics"] if ": " in d)


def test_the_cell_ran_the_lab_qemu_with_the_edu_patch(bigbar_run):
    (cell,) = bigbar_run["cells"]
    assert cell["qemu"] == "lab" and cell["qemu_version"].startswith("10.0.")
    assert cell["qemu_patches"] == qemu.series()
    assert "0001-hw-misc-edu-add-an-optional-RAM-backed-64-bit-BAR.patch" in cell["qemu_patches"]
    argv = json.loads((Path(cell["dir"]) / "qemu-argv.json").read_text())
    assert any("ram-bar-size=0x40000000,ram-bar-index=1" in a for a in argv)


def test_mmio_maps_the_1g_bar_and_records_its_iopte(bigbar_run):
    (cell,) = bigbar_run["cells"]
    recs = records(cell)
    for mode in ("vfio_type1_iommu", "vfio_type1v2_iommu"):
        full = recs[f"vfio_dma_mapping_mmio_test.{mode}.map_full_bar"]
        assert full["outcome"] == "pass", full
        d = diags(full)
        assert (d["bar_index"], d["bar_size"], d["unmapped"]) == ("1", "0x40000000", "0x40000000")
        assert d["iopte_size"] in ("4K", "2M", "1G")
        # The CPU side (dynamic debug): a huge pfnmap only where the mmap is aligned.
        assert d["cpu_map_size"] == "1G"
        misaligned = recs[f"vfio_dma_mapping_mmio_test.{mode}.map_bar_misaligned"]
        assert misaligned["outcome"] == "pass" and "iopte_size" in diags(misaligned)
        assert diags(misaligned)["cpu_map_size"] == "4K"
    for mode in ("iommufd_compat_type1", "iommufd"):
        refused = recs[f"vfio_dma_mapping_mmio_test.{mode}.map_full_bar"]
        assert refused["outcome"] == "pass" and diags(refused)["errno"] == "EFAULT"


def test_p2p_dma_into_and_out_of_the_bar_verifies_its_bytes(bigbar_run):
    (cell,) = bigbar_run["cells"]
    recs = records(cell)
    for mode in ("vfio_type1_iommu", "vfio_type1v2_iommu"):
        for case in ("dma_into_bar", "dma_from_bar"):
            rec = recs[f"vfio_pci_p2p_test.{mode}.{case}"]
            assert rec["outcome"] == "pass", rec
            assert diags(rec)["bytes_verified"] == "2048"


def test_dmabuf_ranges_of_the_bar(bigbar_run):
    (cell,) = bigbar_run["cells"]
    recs = records(cell)
    ranges = recs["vfio_pci_dmabuf_test.export_ram_bar_ranges"]
    assert ranges["outcome"] == "pass", ranges
    assert diags(ranges)["dmabuf_size_single"] == "0x200000"
    # Linux 7.2's iommufd imports VFIO dma-bufs (IOMMU_IOAS_MAP_FILE) and sees them revoked.
    imported = recs["vfio_pci_dmabuf_test.dma_through_an_imported_dmabuf"]
    assert imported["outcome"] == "pass" and diags(imported)["bytes_verified"] == "2048"
    revoked = recs["vfio_pci_dmabuf_test.reset_revokes_an_imported_dmabuf"]
    assert revoked["outcome"] == "pass" and diags(revoked)["dma_after_reset"] == "faulted"


def three_devices(tmp_path: Path) -> Path:
    scenario = tmp_path / "devices.yaml"
    scenario.write_text(
        "machine: {qemu: lab}\n"
        "devices:\n  - type: edu\n  - type: ivshmem\n    bar: {size: 64M}\n  - type: igb\n"
    )
    return scenario


def test_ivshmem_and_igb_boot_and_bind_to_vfio_pci(tmp_path):
    """The other device types: ivshmem's RAM BAR2 (Debian's QEMU has it too) and igb (the
    lab's QEMU only), each behind its own root port and bound to vfio-pci beside edu."""
    script = "lspci -nk; lspci -vv -d 1af4:1110; lspci -vv -d 8086:10c9"
    done = lab("shell", str(three_devices(tmp_path)), "-q", "--", "sh", "-c", script)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for pci_id in ("1234:11e8", "1af4:1110", "8086:10c9"):
        # The device's line in `lspci -nk`, then its indented lines up to the driver's.
        bound = rf"{pci_id}[^\n]*\n(?:\t[^\n]*\n)*?\tKernel driver in use: vfio-pci\n"
        assert re.search(bound, out), (pci_id, out)
    assert "Region 2: Memory at" in out and "(64-bit, prefetchable) [size=64M]" in out
    assert "Single Root I/O Virtualization (SR-IOV)" in out


def test_mmio_reads_while_bars_move_leave_qemu_running(tmp_path):
    """One vCPU reads the three devices' BARs while the other flips their memory decoding.
    QEMU 10.0.13 aborted in iotlb_to_section() when a read went through a TLB entry filled
    before a flip (`section_index < d->map.sections_nb`); the lab's QEMU carries upstream's
    fix (patch 0002: the entry keeps its section)."""
    script = (REPO / "tests" / "fixtures" / "guest" / "mmio_while_bars_move.py").read_text()
    scenario = three_devices(tmp_path)
    done = lab("shell", str(scenario), "-q", "--no-bind", "--", "python3", "-c", script, "30")
    assert done.returncode == 0, done.stdout + done.stderr
    reads = re.search(r"^reads: (\d+) over (\d+) BARs$", done.stdout, re.MULTILINE)
    flips = re.search(r"^flips: (\d+) over 3 devices$", done.stdout, re.MULTILINE)
    assert reads and flips, done.stdout
    assert int(reads[1]) > 0 and int(reads[2]) >= 3 and int(flips[1]) > 0


# DMAs per passing test: mix_and_match is 10 rounds of two copies, the storm 16 copies;
# a copy is two DMAs.
DMAS = {"mix_and_match": 40, "memcpy_storm": 32}


def test_a_short_dma_delay_is_recorded_and_the_driver_tests_pass_well_under_100_ms_a_dma(
    tmp_path,
):
    """edu's dma-delay-ns (patch 0003) at 10 us: in the argv and summary.json, the
    driver tests that poll and take the MSI in turn pass, and the suite takes less time
    than their DMAs alone would at edu's own 100 ms."""
    scenario = tmp_path / "delay.yaml"
    scenario.write_text("machine: {qemu: lab}\ndevices:\n  - type: edu\n    dma_delay: 10us\n")
    root = tmp_path / "results"
    tests = "vfio_pci_driver_test and (mix_and_match or memcpy_storm)"
    done = lab("run", str(scenario), "-k", tests, "--results", str(root))
    assert done.returncode == 0, done.stdout + done.stderr
    (cell,) = json.loads((root / "latest" / "summary.json").read_text())["cells"]
    assert cell["devices"][0]["dma_delay_ns"] == 10_000
    argv = json.loads((Path(cell["dir"]) / "qemu-argv.json").read_text())
    assert any(a.startswith("edu,") and a.endswith(",dma-delay-ns=10000") for a in argv)
    passed = [r["name"] for r in records(cell).values() if r["outcome"] == "pass"]
    assert any("mix_and_match" in n for n in passed) and any("storm" in n for n in passed)
    at_100ms = sum(0.1 * n for name in passed for case, n in DMAS.items() if case in name)
    assert cell["suite_s"]["lab"] < at_100ms, (cell["suite_s"], passed)


def test_the_lab_qemu_patches_pass_qemus_checkpatch(bigbar_run):
    """What docs/devices.md says of them, checked by QEMU's own scripts/checkpatch.pl from
    the source tree they were just applied to (the build above made it)."""
    src = qemu.build_tree(Cache()) / "src"
    for name in qemu.series():
        done = subprocess.run(["perl", "scripts/checkpatch.pl", str(qemu.PATCHES / name)],
                              cwd=src, capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode == 0, f"{name}:\n{done.stdout}{done.stderr}"
        assert "has no obvious style problems" in done.stdout, done.stdout
