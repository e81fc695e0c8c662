"""The guest's runner of the kernel's C selftests, run on the host over fake programs
that print what kselftest_harness.h prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lab.core.data import GUEST_TESTS
from lab.results.tap import parse_text
from tests.conftest import REPO

PROGRAMS = REPO / "tests" / "fixtures" / "kselftest"


def run_runner(tmp_path: Path, *programs: str) -> tuple[str, str]:
    tap, kmsg = tmp_path / "out.tap", tmp_path / "kmsg"
    with tap.open("w") as out:
        subprocess.run(
            [
                sys.executable,
                str(GUEST_TESTS / "lab_kselftest.py"),
                "--tap-fd",
                str(out.fileno()),
                "--suite",
                "kselftest-vfio",
                "--bdf",
                "0000:01:00.0",
                *(str(PROGRAMS / p) for p in programs),
            ],
            check=True,
            pass_fds=(out.fileno(),),
            env=dict(os.environ, VFIO_LAB_KMSG=str(kmsg)),
        )
    return tap.read_text(), kmsg.read_text()


def test_results_keep_upstreams_ids_and_their_diagnostics(tmp_path):
    tap, _ = run_runner(tmp_path, "harness_like")
    parsed = parse_text(tap)
    assert parsed.problems() == []
    got = {r.name: r for r in parsed.results}
    assert [r.outcome for r in parsed.results] == ["pass", "pass", "skip", "fail"]
    assert (
        got[
            "kselftest-vfio:vfio_dma_mapping_test.vfio_type1_iommu_anonymous.dma_map_unmap"
        ].diagnostic("iova")
        == "0x100000"
    )
    assert got[
        "kselftest-vfio:vfio_dma_mapping_test.iommufd_anonymous_hugetlb_1gb.dma_map_unmap"
    ].reason == ("no 1G hugepages")
    failed = got["kselftest-vfio:vfio_dma_mapping_test.vfio_type1_iommu.map_full_bar"]
    assert any("Expected 0 (0) == rc (-14)" in d for d in failed.diagnostics)


def test_markers_frame_each_test_for_the_kernel_log(tmp_path):
    _, kmsg = run_runner(tmp_path, "harness_like")
    lines = kmsg.splitlines()
    assert lines[0] == "vfio-lab: program-start harness_like"
    assert (
        "vfio-lab: test-start kselftest-vfio:vfio_dma_mapping_test.vfio_type1_iommu.map_full_bar"
        in lines
        and "vfio-lab: test-end kselftest-vfio:vfio_dma_mapping_test.vfio_type1_iommu.map_full_bar fail"
        in lines
    )
    assert lines[-1] == "vfio-lab: program-end harness_like 1"


def test_a_program_that_skips_all_or_reports_nothing(tmp_path):
    tap, _ = run_runner(tmp_path, "skips_all", "no_driver", "harness_like")
    parsed = parse_text(tap)
    skipped, broken = parsed.results[:2]
    assert (skipped.name, skipped.outcome) == ("kselftest-vfio:skips_all", "skip")
    assert skipped.reason == "No SR-IOV capability on 0000:01:00.0"
    assert (broken.name, broken.outcome) == ("kselftest-vfio:no_driver", "error")
    assert "exited 4 without reporting a test" in broken.reason
    assert "stderr: No driver found for device 0000:01:00.0" in broken.diagnostics
    assert len(parsed.results) == 6 and parsed.plan == 6
