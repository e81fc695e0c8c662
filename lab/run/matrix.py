"""Running a scenario's matrix: its cells one after another or in parallel, with retries,
into one run directory whose results are rewritten as each cell finishes."""

from __future__ import annotations

import os
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from lab.artifacts.kernels import KERNEL_BUILDERS
from lab.core.cache import Cache
from lab.core.files import blaming, copy_file, make_dir
from lab.core.progress import SILENT, Progress
from lab.model import shards
from lab.model.arches import ARCHES
from lab.model.kernelspec import LocalTreeKind
from lab.model.scenario import Cell, Scenario
from lab.model.shards import WHOLE, Shard, ShardPlan
from lab.results.records import TestRecord
from lab.results.summary import CellResult, RunResults
from lab.run.booter import CellBooter
from lab.run.cell import CellRun
from lab.vm.accel import AccelChoice


@dataclass
class RunOptions:
    results_root: Path
    accel: str | None = None  # overrides the scenario's
    pytest_args: list[str] = field(default_factory=list)
    gdb_port: int | None = None
    jobs: int = 1
    retries: int = 0  # attempts more for a cell that failed for infrastructure reasons
    snapshots: bool = True  # restore test-ready guests from snapshots where valid
    # pytest collecting no test (its -k selects none of the lab's) is a result, not a usage
    # error: `vfio-lab bisect` judges its selection over every suite of the cell.
    pytest_may_select_none: bool = False


def default_jobs(s: Scenario) -> int:
    """As many cells at once as the cores and memory hold: a core per cell, and each
    guest its RAM while the host keeps 2 GiB for itself.

    A core, not one per vCPU: a payload runs one test at a time, so a guest keeps about
    one vCPU busy. iommufd-compat's two 2-vCPU cells on 2 cores (TCG) took 49 s at once
    against 75 s one after the other, each cell 5-10% slower than alone."""
    cores = os.cpu_count() or 1
    meminfo = Path("/proc/meminfo").read_text()
    total = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1)) << 10  # type: ignore[union-attr]
    by_memory = (total - (2 << 30)) // (s.machine.memory + (512 << 20))
    return max(1, min(cores, by_memory))


def shard_plan(selection: list[Cell], cache: Cache, shard: Shard = WHOLE) -> ShardPlan:
    """What a run of `shard` of `selection` is part of, each `local:` tree counted by what
    it holds now (its commit and edits), not by its path."""
    trees = {
        c.kernel.arg: KERNEL_BUILDERS[c.kernel.source].resolved(c.kernel, ARCHES[c.arch], cache)
        for c in selection
        if c.kernel.source == LocalTreeKind.name
    }
    return shards.plan(selection, shard, trees)


def cell_dirname(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", name)


def new_run_dir(results_root: Path) -> tuple[str, Path]:
    """A run id starts with its UTC time, as `rundir.start_time` reads it back."""
    run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)
    run_dir = results_root / run_id
    make_dir(run_dir, exist_ok=False)
    latest = results_root / "latest"
    tmp = results_root / f".latest-{run_id}"
    with blaming(latest):
        tmp.symlink_to(run_id)
        os.replace(tmp, latest)
    return run_id, run_dir


class ScenarioRun:
    def __init__(
        self, scenario: Scenario, opts: RunOptions, cache: Cache, progress: Progress = SILENT
    ) -> None:
        self.scenario = scenario
        self.opts = opts
        self.cache = cache
        self.progress = progress
        self._results: RunResults | None = None
        self._accels: dict[str, AccelChoice] = {}  # by arch
        self.booter = CellBooter(
            cache, progress, accel=opts.accel, on_accel=self._on_accel, snapshots=opts.snapshots
        )

    def _on_accel(self, arch: str, choice: AccelChoice) -> None:
        """The run's accelerator, one per arch its cells have (each says which where
        there are several)."""
        self._accels[arch] = choice
        accels = ",".join(sorted({c.accel for c in self._accels.values()}))
        several = len(self._accels) > 1
        reasons = [f"{a}: {c.reason}" if several else c.reason for a, c in self._accels.items()]
        self.results.set_accelerator(accels, "; ".join(reasons))

    @property
    def results(self) -> RunResults:
        if self._results is None:
            raise RuntimeError("the run has not started")
        return self._results

    def start(self, plan: ShardPlan) -> RunResults:
        """The run directory, with the scenario as it was, and its (empty) results, which
        say what the run is part of (`plan`)."""
        run_id, run_dir = new_run_dir(self.opts.results_root)
        copy_file(self.scenario.file, run_dir / "scenario.yaml")
        self._results = RunResults(
            run_dir, self.scenario.name, run_id, "pending", "not chosen yet", plan
        )
        self._results.expectations = self.scenario.expectations
        return self._results

    def run(self, cells: list[Cell]) -> RunResults:
        """Run every cell, `jobs` at a time; a cell's failure does not stop the others."""
        if self.opts.jobs <= 1 or len(cells) == 1:
            for i, cell in enumerate(cells, 1):
                self.progress("run", f"cell {i}/{len(cells)}: {cell.name}")
                self._record(*self.run_cell(cell))
            return self.results
        self.progress("run", f"{len(cells)} cells, {self.opts.jobs} at a time")
        with ThreadPoolExecutor(max_workers=self.opts.jobs) as pool:
            futures = [pool.submit(self.run_cell, cell) for cell in cells]
            try:
                for future in as_completed(futures):
                    self._record(*future.result())
            except KeyboardInterrupt:
                # Worker threads never see Ctrl-C: stop their guests so they unwind now.
                pool.shutdown(wait=False, cancel_futures=True)
                self.booter.stop_all()
                raise
        return self.results

    def _record(self, result: CellResult, records: list[TestRecord]) -> None:
        """The record stage: results are written as each cell finishes."""
        self.results.set_records(result.name, records)
        self.results.add(result)

    def run_cell(self, cell: Cell) -> tuple[CellResult, list[TestRecord]]:
        """One cell, tried again (in its own directory) while it fails for infrastructure
        reasons and retries are left; earlier attempts' errors stay in the result."""
        earlier: list[str] = []
        for attempt in range(self.opts.retries + 1):
            suffix = f".retry{attempt}" if attempt else ""
            cell_dir = self.results.run_dir / (cell_dirname(cell.name) + suffix)
            attempt_run = CellRun(
                cell,
                cell_dir,
                self.booter,
                self.opts.pytest_args,
                self.progress,
                self.opts.gdb_port,
                self.opts.pytest_may_select_none,
            )
            result, records = attempt_run.run()
            if result.infra_error is None or attempt == self.opts.retries:
                break
            earlier.append(result.infra_error.splitlines()[0])
            self.progress(
                cell.name,
                f"retrying after an infrastructure error ({attempt + 1}/{self.opts.retries})",
            )
        result.earlier_attempts = earlier
        return result, records
