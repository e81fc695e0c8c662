"""Run results: summary.json rewritten as each cell finishes, and the terminal table."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.core.exitcodes import EXIT_INFRA, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNEXPECTED
from lab.core.files import write_atomic
from lab.model.scenario import Expectation
from lab.model.shards import ShardPlan
from lab.results import reports
from lab.results.outcomes import SHOWN_ORDER, count
from lab.results.records import TestRecord
from lab.results.rundir import CellData, RunData


@dataclass
class CellResult:
    name: str
    kernel: str
    verdict: str  # pass | fail | error
    counts: dict[str, int]
    dir: str
    wall_s: float
    boot_to_ssh_s: float | None = None
    artifacts_s: float | None = None  # preparing kernel and root filesystem (a build when cold)
    infra_error: str | None = None
    problems: list[str] = field(default_factory=list)
    # Serious kernel alarms outside every test (also among the problems): the cell's own,
    # no test's; `vfio-lab bisect` cannot judge a commit by its tests after one.
    outside_alarms: list[str] = field(default_factory=list)
    kernel_release: str | None = None
    kernel_identity: str | None = None
    # What the outcomes can depend on, by component (kernel, config, qemu, payload, rootfs,
    # suites, machine): history names the ones that changed with a flip.
    identity: dict[str, str] = field(default_factory=dict)
    qemu: str | None = None  # system | lab | path (machine.qemu)
    qemu_version: str | None = None
    qemu_patches: list[str] = field(default_factory=list)  # the lab's patches in that QEMU
    qemu_build_s: float | None = None  # when this cell built the lab's QEMU
    # The machine's PCI devices as QEMU is given them (lab.model.variants.DeviceConfig).
    devices: list[dict[str, Any]] = field(default_factory=list)
    guest_release: str | None = None
    kernel_verified: bool | None = None  # the guest provably runs the cell's kernel
    container_provider: str | None = None  # who provides /dev/vfio/vfio: vfio | iommufd | none
    kernel_build_s: float | None = None  # the build that made the kernel (even if cached since)
    suite_s: dict[str, float] = field(default_factory=dict)  # each suite's time in the guest
    # Seconds per phase: prepare, qemu_start, then firmware+kernel, userspace, ssh, setup
    # (a cold boot) or restore, ssh, resume (from a snapshot), payload, teardown.
    phases_s: dict[str, float] = field(default_factory=dict)
    snapshot: str | None = None  # "restored KEY", "saved KEY", "none: why"
    selftest_compat: list[str] = field(default_factory=list)  # build fixes the C suites needed
    earlier_attempts: list[str] = field(default_factory=list)  # infra errors that were retried
    # What went wrong around the tests without deciding anything (a stalled transmit queue
    # SSH survived): shown with the cell, never a reason for its verdict.
    warnings: list[str] = field(default_factory=list)
    # Seconds of the payload the host kept QEMU runnable but waiting for a CPU: the per-test
    # and stall timeouts did not count them (lab.vm.runclock).
    host_wait_s: float | None = None
    unexpected: list[str] = field(default_factory=list)  # "test: outcome", for the table
    parity: str | None = None  # "MODE: the parity line" when the cell ran a C suite


def exit_code_of(cells: list[dict[str, Any]], missing: list[str] | None = None) -> int:
    """A cell whose tests ran and went wrong outweighs one the infrastructure failed:
    the kernel showed something (and `git bisect run` must hear it as bad, not skip).
    A promised cell that never ran (`missing`: its shard was not merged) is the
    infrastructure's failure too."""
    if any(c["verdict"] != "pass" and not c.get("infra_error") for c in cells):
        return EXIT_UNEXPECTED
    if missing or any(c.get("infra_error") for c in cells):
        return EXIT_INFRA
    return EXIT_OK


def empty_counts() -> dict[str, int]:
    return count(())


class RunResults:
    def __init__(
        self,
        run_dir: Path,
        scenario: str,
        run_id: str,
        accelerator: str,
        accel_reason: str,
        plan: ShardPlan,
    ) -> None:
        self.run_dir = run_dir
        self.data: dict[str, Any] = {
            "scenario": scenario,
            "run_id": run_id,
            **plan.to_json(),
            "accelerator": accelerator,
            "accelerator_reason": accel_reason,
            "exit_code": None,
            "cells": [],
        }
        self.cells: list[CellResult] = []
        self.records: dict[str, list[TestRecord]] = {}
        self.expectations: list[Expectation] = []  # the scenario's known failures
        self._lock = threading.Lock()

    def set_accelerator(self, accel: str, reason: str) -> None:
        self.data["accelerator"], self.data["accelerator_reason"] = accel, reason
        self.write_summary()

    def set_records(self, cell: str, records: list[TestRecord]) -> None:
        self.records[cell] = records

    def add(self, cell: CellResult) -> None:
        """A finished cell: its tests.json, then the run's summary and reports, rewritten."""
        with self._lock:
            self.cells.append(cell)
            self.data["cells"].append(asdict(cell))
            records = self.records.setdefault(cell.name, [])
            write_atomic(Path(cell.dir) / "tests.json", json.dumps([asdict(r) for r in records]))
            self.write()

    @property
    def exit_code(self) -> int:
        return exit_code_of(self.data["cells"])

    def finish(self, interrupted: bool = False) -> int:
        code = EXIT_INTERRUPTED if interrupted else self.exit_code
        self.data["exit_code"] = code
        self.data["interrupted"] = interrupted
        self.data["unused_expectations"] = self.unused_expectations()
        self.write()
        return code

    def unused_expectations(self) -> list[str]:
        """Known failures that matched no test in this run: fixed, renamed, or not run
        here (--only, -k); worth a look before they hide a real failure."""
        used = {
            (r.expectation["test"], r.expectation["cells"])
            for recs in self.records.values()
            for r in recs
            if r.expectation
        }
        return [
            f"{e.test} (cells {e.cells})"
            for e in self.expectations
            if (e.test, e.cells) not in used
        ]

    def write_summary(self) -> None:
        write_atomic(self.run_dir / "summary.json", json.dumps(self.data, indent=2) + "\n")

    def write(self) -> None:
        """summary.json and the reports: after each cell and at the end of the run."""
        self.write_summary()
        reports.write_all(self.run_data())

    def run_data(self) -> RunData:
        cells = [CellData(c, self.records.get(c["name"], [])) for c in self.data["cells"]]
        return RunData(self.run_dir, self.data, cells)


UNEXPECTED_SHOWN = 10


def table(results: RunResults) -> str:
    header = ["cell", "verdict", *SHOWN_ORDER, "boot", "wall"]
    rows = [header]
    for c in results.cells:
        boot = f"{c.boot_to_ssh_s:.1f}s" if c.boot_to_ssh_s is not None else "-"
        counts = [str(c.counts.get(k, 0)) for k in SHOWN_ORDER]
        rows.append([c.name, c.verdict, *counts, boot, f"{c.wall_s:.1f}s"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for c in results.cells:
        if c.infra_error:
            lines.append(f"{c.name}: {c.infra_error}")
        lines += [f"{c.name}: {p}" for p in c.problems]
        lines += [f"{c.name}: warning: {w}" for w in c.warnings]
        if c.parity:
            lines.append(f"{c.name}: parity {c.parity}")
        lines += [
            f"{c.name}: upstream selftests needed compat patch {p}" for p in c.selftest_compat
        ]
        lines += [f"{c.name}: unexpected {u}" for u in c.unexpected[:UNEXPECTED_SHOWN]]
        if len(c.unexpected) > UNEXPECTED_SHOWN:
            lines.append(f"{c.name}: ... {len(c.unexpected) - UNEXPECTED_SHOWN} more unexpected")
    if unused := results.data.get("unused_expectations"):
        lines.append(f"expectations that matched no test: {', '.join(unused)}")
    lines.append(
        f"report: {results.run_dir / reports.HTML}  junit: {results.run_dir / reports.JUNIT}"
    )
    lines.append(
        f"accelerator: {results.data['accelerator']} ({results.data['accelerator_reason']})"
    )
    lines.append(f"results: {results.run_dir}")
    return "\n".join(lines)
