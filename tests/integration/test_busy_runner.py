"""Nights that hold on a busy runner (issue 21), for real: `iommufd-compat` three times
while busy loops, one per core, hold every CPU of the host.

The selection is `-k "vfio_dma_mapping_test and hugetlb"`: the seed-000 test that broke
both cells on a loaded 2-core TCG host (vfio_type1_iommu_anonymous_hugetlb_1gb: past the
120 s per-test timeout in the =n cell, a NETDEV WATCHDOG that got the =y cell abandoned)
in every IOMMU mode, with its 2 MiB sibling: 10 tests per cell. The whole scenario takes
about 140 s on an idle 2-core host and two to three times that under the hog, so three
runs of it would be 15-20 min; the selection keeps them to a few minutes each and still
maps and pins 1 GiB five times per cell, the work that starved.

Before the hog, one idle run of the same selection (the control, and warm caches: a
kernel built under the hog would measure the build, not the guest). Under the hog, each
run must come to an outcome for every selected test: exit 0 or 1, no infrastructure
error, no hang, no abandoned guest. The hog must have been felt (QEMU waited for a CPU in
every cell), or the test proved nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import bench
from tests.conftest import lab
from tests.integration.conftest import summary
from vfiolib.vfio import MODES

pytestmark = pytest.mark.vm

SELECTION = "vfio_dma_mapping_test and hugetlb"
BACKINGS = ("anonymous_hugetlb_2mb", "anonymous_hugetlb_1gb")
SELECTED = {f"vfio_dma_mapping_test.{m}_{b}.dma_map_unmap" for m in MODES for b in BACKINGS}
CELLS = {"7.2-iommufd_vfio_container=y", "7.2-iommufd_vfio_container=n"}
RUNS = 3


@pytest.fixture
def cpu_hog() -> Iterator[list[int]]:
    """One busy loop per core, always killed after the test."""
    with bench.cpu_hog(os.cpu_count() or 1) as pids:
        yield pids


def run_selection(root: Path) -> dict:
    done = lab("run", "iommufd-compat", "-k", SELECTION, "--results", str(root))
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return summary(root)


def check_every_test_came_to_an_outcome(run: dict) -> None:
    assert run["exit_code"] in (0, 1) and not run["interrupted"]
    assert {c["name"] for c in run["cells"]} == CELLS
    for cell in run["cells"]:
        where = f"{cell['name']}: {cell['problems']} {cell.get('warnings')}"
        assert cell["infra_error"] is None and cell["earlier_attempts"] == [], where
        assert not [p for p in cell["problems"] if p.startswith("stopped early")], where
        records = json.loads((Path(cell["dir"]) / "tests.json").read_text())
        assert {r["name"] for r in records} == SELECTED, where
        for r in records:
            assert r["outcome"] != "notrun" and not r["reason"].startswith("hang:"), r


def test_iommufd_compat_holds_three_times_under_a_cpu_hog(results: Path, request) -> None:
    control = run_selection(results / "idle")
    check_every_test_came_to_an_outcome(control)
    hog = request.getfixturevalue("cpu_hog")
    assert all(Path(f"/proc/{pid}").exists() for pid in hog)
    for i in range(RUNS):
        run = run_selection(results / f"loaded-{i}")
        check_every_test_came_to_an_outcome(run)
        for cell in run["cells"]:
            assert cell["host_wait_s"] > 0, f"run {i}: {cell['name']} never waited for a CPU"
