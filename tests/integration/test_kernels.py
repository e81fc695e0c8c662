"""Kernels from source, for real: the Debian source package, merge_config.sh, builds, boots.

Marked `vm`: they need the network (Debian's archive) and, for the matrix test, build
two kernels (about 7 min cold on 2 cores, much less with a warm ccache) and boot them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.tap import TapResult, parse_text
from tests.conftest import lab

pytestmark = pytest.mark.vm


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


def _tap(cell: dict) -> dict[str, TapResult]:
    tap = parse_text((Path(cell["dir"]) / "results.tap").read_text())
    return {r.name: r for r in tap.results}


def test_iommufd_compat_matrix_shows_what_the_container_switch_changes(tmp_path):
    """Builds debian:7.2 twice, boots both, runs the whole payload in all five modes."""
    # --retries 1: under TCG the guest's virtio-net has been seen to stall once in a while
    # (NETDEV WATCHDOG); the lab gives up on such an attempt at once and tries again.
    done = lab(
        "run",
        "scenarios/iommufd-compat.yaml",
        "--results",
        str(tmp_path / "results"),
        "--retries",
        "1",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    cells = {
        c["name"]: c
        for c in json.loads((tmp_path / "results" / "latest" / "summary.json").read_text())["cells"]
    }
    on, off = cells["7.2-iommufd_vfio_container=y"], cells["7.2-iommufd_vfio_container=n"]
    for cell in (on, off):
        assert cell["verdict"] == "pass" and cell["counts"]["fail"] == 0
        assert cell["kernel_verified"] is True and cell["guest_release"].startswith("7.2")
    assert (on["container_provider"], off["container_provider"]) == ("iommufd", "vfio")
    tap_on, tap_off = _tap(on), _tap(off)
    # shared/seeds/000: type1 v1 through iommufd's /dev/vfio/vfio maps 4 KiB, VFIO's 1 GiB.
    v1_1gb = "vfio_dma_mapping_test.vfio_type1_iommu_anonymous_hugetlb_1gb.dma_map_unmap"
    assert tap_on[v1_1gb].diagnostic("iopte_size") == "4K"
    assert tap_off[v1_1gb].diagnostic("iopte_size") == "1G"
    v2_1gb = "vfio_dma_mapping_test.vfio_type1v2_iommu_anonymous_hugetlb_1gb.dma_map_unmap"
    assert (
        tap_on[v2_1gb].diagnostic("iopte_size") == tap_off[v2_1gb].diagnostic("iopte_size") == "1G"
    )
    # Native iommufd runs (not skipped) in both, real DMA included.
    for tap in (tap_on, tap_off):
        assert tap["vfio_pci_driver_test.iommufd.memcpy_success"].outcome == "pass"
        assert (
            tap["vfio_dma_mapping_mmio_test.iommufd.map_full_bar"].diagnostic("errno") is not None
        )
    # MMIO through type1: VFIO's container maps it, iommufd's refuses.
    bar = "vfio_dma_mapping_mmio_test.vfio_type1_iommu.map_full_bar"
    assert tap_off[bar].diagnostic("unmapped") == "0x100000"
    assert tap_on[bar].diagnostic("errno") is not None
