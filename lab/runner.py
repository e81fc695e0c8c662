"""Running a scenario: boot each cell, run the payload, record results and provenance."""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import console, triage
from lab import provenance as provenance_mod
from lab.cache import Cache, file_sha256, tree_digest
from lab.console import ConsoleWatch, Stop
from lab.errors import InfraError
from lab.machine import Machine
from lab.payload import PYTEST_RAN, RUNTIME_DIR, TapStream, collect_dmesg, run_payload
from lab.progress import SILENT, Progress
from lab.results import CellResult, RunResults, empty_counts
from lab.scenario import Cell, Scenario, expand
from lab.session import CellBooter, Prepared
from lab.tap import TapParser, TapResult

CRASH_GRACE_S = 5.0


@dataclass
class RunOptions:
    results_root: Path
    accel: str | None = None  # overrides the scenario's
    pytest_args: list[str] = field(default_factory=list)
    gdb_port: int | None = None
    jobs: int = 1
    retries: int = 0  # attempts more for a cell that failed for infrastructure reasons


def default_jobs(s: Scenario) -> int:
    """As many cells at once as the cores and memory hold: each guest gets its vCPUs and
    RAM, and the host keeps 2 GiB for itself."""
    cores = os.cpu_count() or 1
    meminfo = Path("/proc/meminfo").read_text()
    total = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1)) << 10  # type: ignore[union-attr]
    by_memory = (total - (2 << 30)) // (s.machine.memory + (512 << 20))
    return max(1, min(cores // s.machine.cpus, by_memory))


def cell_dirname(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", name)


def new_run_dir(results_root: Path) -> tuple[str, Path]:
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    run_dir = results_root / run_id
    run_dir.mkdir(parents=True)
    latest = results_root / "latest"
    tmp = results_root / f".latest-{run_id}"
    tmp.symlink_to(run_id)
    os.replace(tmp, latest)
    return run_id, run_dir


def provenance(cell: Cell, prepared: Prepared, pytest_args: list[str]) -> dict[str, Any]:
    """Everything `vfio-lab repro` needs to boot the same thing again, and to notice drift."""
    s = cell.scenario
    return {
        "cell": cell.name,
        "scenario_file": str(s.file.resolve()),
        "scenario_snapshot": "../scenario.yaml",
        "kernel": {
            "spec": cell.kernel.label,
            "resolved_spec": prepared.kernel.resolved_spec,
            "identity": prepared.kernel.identity,
            "release": prepared.kernel.release,
            "vmlinuz_sha256": prepared.kernel.vmlinuz_sha256,
            "initramfs_sha256": file_sha256(prepared.kernel.initramfs),
        },
        "rootfs_key": prepared.image.key,
        "payload": {
            "tests": str(s.payload_dir),
            "tests_digest": tree_digest(s.payload_dir),
            "runtime_digest": tree_digest(RUNTIME_DIR),
        },
        "config": {
            "fragments": list(cell.config.fragments),
            "overrides": [list(o) for o in cell.config.overrides],
        },
        "pytest_args": s.payload.args + pytest_args,
        "accelerator": prepared.accel,
    }


class ScenarioRun:
    def __init__(
        self, scenario: Scenario, opts: RunOptions, cache: Cache, progress: Progress = SILENT
    ) -> None:
        self.scenario = scenario
        self.opts = opts
        self.progress = progress
        self.run_id, self.run_dir = new_run_dir(opts.results_root)
        (self.run_dir / "scenario.yaml").write_bytes(scenario.file.read_bytes())
        self.results = RunResults(
            self.run_dir, scenario.name, self.run_id, "pending", "not chosen yet"
        )
        self.results.expectations = scenario.expectations
        self.booter = CellBooter(
            cache,
            progress,
            accel=opts.accel,
            on_accel=lambda c: self.results.set_accelerator(c.accel, c.reason),
        )

    def run(self, cells: list[Cell] | None = None) -> RunResults:
        """Run every cell, `jobs` at a time; a cell's failure does not stop the others."""
        cells = expand(self.scenario) if cells is None else cells
        if self.opts.jobs <= 1 or len(cells) == 1:
            for i, cell in enumerate(cells, 1):
                self.progress("run", f"cell {i}/{len(cells)}: {cell.name}")
                self.results.add(self.run_cell(cell))
            return self.results
        self.progress("run", f"{len(cells)} cells, {self.opts.jobs} at a time")
        with ThreadPoolExecutor(max_workers=self.opts.jobs) as pool:
            futures = [pool.submit(self.run_cell, cell) for cell in cells]
            try:
                for future in as_completed(futures):
                    self.results.add(future.result())
            except KeyboardInterrupt:
                # Worker threads never see Ctrl-C: stop their guests so they unwind now.
                pool.shutdown(wait=False, cancel_futures=True)
                self.booter.stop_all()
                raise
        return self.results

    def run_cell(self, cell: Cell) -> CellResult:
        """One cell, tried again (in its own directory) while it fails for infrastructure
        reasons and retries are left; earlier attempts' errors stay in the result."""
        earlier: list[str] = []
        for attempt in range(self.opts.retries + 1):
            suffix = f".retry{attempt}" if attempt else ""
            result = self._attempt(cell, self.run_dir / (cell_dirname(cell.name) + suffix))
            if result.infra_error is None or attempt == self.opts.retries:
                break
            earlier.append(result.infra_error.splitlines()[0])
            self.progress(
                cell.name,
                f"retrying after an infrastructure error ({attempt + 1}/{self.opts.retries})",
            )
        result.earlier_attempts = earlier
        return result

    def _attempt(self, cell: Cell, cell_dir: Path) -> CellResult:
        cell_dir.mkdir()
        started = time.monotonic()
        result = CellResult(
            name=cell.name,
            kernel=cell.kernel.label,
            verdict="error",
            counts=empty_counts(),
            dir=str(cell_dir),
            wall_s=0.0,
        )
        try:
            self._boot_and_test(cell, cell_dir, result)
        except InfraError as e:
            result.infra_error = str(e)
            result.verdict = "error"
            self.progress(cell.name, f"infrastructure error: {str(e).splitlines()[0]}")
        finally:
            result.wall_s = round(time.monotonic() - started, 2)
            _placeholders(cell_dir, result)
        return result

    def _boot_and_test(self, cell: Cell, cell_dir: Path, result: CellResult) -> None:
        started = time.monotonic()
        prepared = self.booter.prepare(cell)
        result.artifacts_s = round(time.monotonic() - started, 2)
        result.kernel_build_s = prepared.kernel.build_s
        result.kernel_release, result.kernel_identity = (
            prepared.kernel.release,
            prepared.kernel.identity,
        )
        record = provenance(cell, prepared, self.opts.pytest_args)
        (cell_dir / "provenance.json").write_text(json.dumps(record, indent=2) + "\n")
        with self.booter.boot(cell, prepared, cell_dir, gdb_port=self.opts.gdb_port) as machine:
            result.boot_to_ssh_s = round(machine.boot_to_ssh_s or 0.0, 2)
            result.qemu_version = _qemu_version(machine)
            self._check_guest(machine, prepared, result)
            tap, dmesg, stop = self._payload(machine, cell, cell_dir, prepared, result)
        # Only now, with QEMU gone, is the console complete (a panic's trace included).
        console_lines = console.read_lines(cell_dir / "console.log")
        recs = triage.records(tap, dmesg, console_lines, stop)
        triage.expect(recs, cell.name, self.scenario.expectations)
        result.counts = triage.counts(recs)
        kernel_log = dmesg if dmesg is not None else console_lines
        result.problems = tap.problems() + result.problems + triage.outside_alarms(kernel_log)
        result.verdict = triage.verdict(recs, result.problems)
        result.unexpected = [f"{r.name}: {r.outcome}" for r in recs if r.unexpected]
        self.results.set_records(cell.name, recs)
        c = result.counts
        self.progress(
            cell.name,
            f"{result.verdict}: {c['pass']} passed, {c['fail']} failed, {c['error']} errors, "
            f"{c['notrun']} not run, {c['skip']} skipped",
        )

    def _on_result(self, cell: Cell) -> Callable[[TapResult], None]:
        def tell(r: TapResult) -> None:
            if r.outcome in triage.UNEXPECTED:
                self.progress(cell.name, f"{r.outcome}: {r.name}")

        return tell

    def _check_guest(self, machine: Machine, prepared: Prepared, result: CellResult) -> None:
        facts = provenance_mod.read_facts(machine.ssh)
        result.guest_release = facts.release
        result.container_provider = facts.container_provider
        wrong = provenance_mod.mismatches(facts, prepared.kernel)
        result.kernel_verified = not wrong
        result.problems += wrong

    def _payload(
        self,
        machine: Machine,
        cell: Cell,
        cell_dir: Path,
        prepared: Prepared,
        result: CellResult,
    ) -> tuple[TapParser, list[str] | None, Stop | None]:
        """Run the payload; returns its TAP, the guest's dmesg (None if it has none to give)
        and why the run was stopped early, if it was. A guest that dies is told by its
        console."""
        p = self.scenario.payload
        watch = ConsoleWatch(cell_dir / "console.log", p.stall_timeout, p.test_timeout)
        stream = TapStream(cell_dir / "results.tap", self._on_result(cell))
        stop = None
        try:
            run = run_payload(
                machine.ssh,
                self.scenario,
                prepared.kernel.vmlinuz.parent / "config",
                self.opts.pytest_args,
                stream,
                watch,
                cell_dir / "payload.log",
                self.progress,
            )
            stop = run.stop
            # A panicking guest drops SSH (no exit status) a moment before QEMU
            # (-no-reboot) finishes exiting.
            grace = CRASH_GRACE_S if stop is None and run.pytest_status not in PYTEST_RAN else 0.0
        except InfraError:
            if machine.exit_status(wait=CRASH_GRACE_S) is None:
                raise
            grace = 0.0
        finally:
            stream.close()
        crashed = machine.exit_status(wait=grace)
        if crashed is not None:
            dying_words = console.read_lines(cell_dir / "console.log")
            result.problems.append(crash_report(crashed, dying_words))
            stop = stop or _death(dying_words)
        if stop is not None:
            result.problems.append(f"stopped early: {stop.kind}: {stop.message}")
            self.progress(machine.cfg.name, f"stopping the guest: {stop.message}")
            machine.ssh.close()  # a hung guest gets no `sync`: it is killed
            return stream.parser, None, stop
        dmesg = None if crashed is not None else collect_dmesg(machine.ssh, cell_dir)
        return stream.parser, dmesg, None


def _death(console_lines: list[str]) -> Stop:
    """A guest that died under the payload without the watch seeing it first."""
    alarms = console.crash_lines(console_lines)
    message = alarms[0] if alarms else "QEMU exited during the payload"
    return Stop("panic" if alarms else "died", message, triage.last_running(console_lines))


def crash_report(exit_code: int, lines: list[str]) -> str:
    """What the console says about a guest that died: the kernel's alarm lines, then the tail."""
    alarms = "".join(f"\n  ! {line}" for line in console.crash_lines(lines))
    tail = "".join(f"\n  | {line}" for line in lines[-15:])
    return f"QEMU exited during the payload (exit code {exit_code}){alarms}\nconsole tail:{tail}"


def _placeholders(cell_dir: Path, result: CellResult) -> None:
    """Every cell directory has the same files; one the cell never got to says why."""
    why = result.infra_error.splitlines()[0] if result.infra_error else "not produced"
    for name in ("results.tap", "dmesg.txt", "console.log", "qemu-argv.json"):
        path = cell_dir / name
        if not path.exists() or path.stat().st_size == 0:
            path.write_text(f"# {name} missing: {why}\n" if name != "qemu-argv.json" else "[]\n")


def _qemu_version(machine: Machine) -> str:
    info = machine.query("query-version")
    assert isinstance(info, dict)
    q = info["qemu"]
    return f"{q['major']}.{q['minor']}.{q['micro']}{info.get('package', '')}"
