"""Run directories written by the real RunResults, for report, junit and compare tests."""

from __future__ import annotations

from pathlib import Path

from lab.model.shards import WHOLE, Shard, ShardPlan
from lab.results.records import TestRecord
from lab.results.summary import CellResult, RunResults
from lab.run.triage import counts, verdict

SCENARIO_HASH = "0123456789abcdef"


def rec(name: str, outcome: str = "pass", *diags: str, **kw: object) -> TestRecord:
    return TestRecord(name, outcome, diagnostics=list(diags), **kw)  # type: ignore[arg-type]


def write_run(
    root: Path,
    cells: dict[str, list[TestRecord]],
    infra: dict[str, str] | None = None,
    run_id: str = "20261121-000000-abcd",
    kernel_identity: str | None = None,
    plan: ShardPlan | None = None,
    identity: dict[str, str] | None = None,
    kernel: str = "debian:7.2",
) -> Path:
    """A finished run with these cells (in order); `infra` gives cells an infra error.
    Without a `plan`, the cells are all the run promised."""
    run_dir = root / "run"
    run_dir.mkdir()
    plan = plan or ShardPlan(WHOLE, tuple(cells), SCENARIO_HASH)
    results = RunResults(run_dir, "two-cells", run_id, "tcg", "auto: no KVM", plan)
    for name, records in cells.items():
        (run_dir / name).mkdir()
        error = (infra or {}).get(name)
        results.set_records(name, records)
        results.add(
            CellResult(
                name=name,
                kernel=kernel,
                verdict="error" if error else verdict(records, []),
                counts=counts(records),
                dir=str(run_dir / name),
                wall_s=42.0,
                boot_to_ssh_s=5.0,
                kernel_release="7.2.13-vfio-lab",
                kernel_identity=kernel_identity,
                identity=identity or {},
                infra_error=error,
            )
        )
    results.finish()
    return run_dir


CELLS = ("7.2-y", "7.2-n")


def shard_run(
    root: Path,
    k: int,
    n: int,
    cells: dict[str, list[TestRecord]],
    promised: tuple[str, ...] = CELLS,
    digest: str = SCENARIO_HASH,
) -> Path:
    """The run of shard k/n of the `promised` cells, which ran `cells`."""
    root.mkdir(parents=True)
    return write_run(root, cells, plan=ShardPlan(Shard(k, n), promised, digest))


def sample_cells() -> dict[str, list[TestRecord]]:
    """Two cells that differ the way the seed-000 pair does, plus the triage outcomes; the
    tests the guest died under or never ran have no duration."""
    hugetlb = "vfio_dma_mapping_test.vfio_type1_iommu_anonymous_hugetlb_1gb.dma_map_unmap"
    return {
        "7.2-iommufd_vfio_container=y": [
            rec(hugetlb, "pass", "container_provider: iommufd", "iopte_size: 4K", duration_s=3.2),
            rec(
                "vfio_pci_device_test.reset", "pass", "container_provider: iommufd", duration_s=1.05
            ),
            rec(
                "vfio_pci_driver_test.iommufd.memcpy_to_unmapped_region",
                "pass",
                "container_provider: iommufd",
                duration_s=0.42,
                kernel=["iommu fault: DMAR: [DMA Write NO_PASID] Request device [00:03.0]"],
                dmesg=["[ 28.4] DMAR: [DMA Write NO_PASID] Request device [00:03.0]"],
            ),
            rec(
                "crash_test.crash_the_kernel",
                "error",
                reason="panic: Kernel panic - not syncing: sysrq triggered crash",
                kernel=["panic: Kernel panic - not syncing: sysrq triggered crash"],
                console=["[ 8.59] sysrq: Trigger a crash", "\x00\x1b[0m junk <b>&"],
            ),
            rec("after_test.never", "notrun", reason="not run: the guest stopped during x"),
        ],
        "7.2-iommufd_vfio_container=n": [
            rec(hugetlb, "pass", "container_provider: vfio", "iopte_size: 1G", duration_s=2.9),
            rec(
                "vfio_pci_device_test.reset",
                "fail",
                "container_provider: vfio",
                "call: E 1 != 0",
                duration_s=1.05,
            ),
            rec("vfio_pci_driver_test.iommufd.memcpy_to_unmapped_region", "pass", duration_s=0.4),
            rec(
                "crash_test.crash_the_kernel",
                "xfail",
                reason="known failure: sysrq",
                duration_s=0.8,
                expectation={
                    "test": "crash_test.*",
                    "cells": "*",
                    "reason": "sysrq",
                    "link": "https://lore.kernel.org/x",
                },
            ),
        ],
    }
