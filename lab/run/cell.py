"""One cell through its stages: prepare -> boot -> payload -> triage -> record.

- prepare: the kernel, root filesystem and keys (built or fetched, cached), the accelerator;
- boot: QEMU on a fresh overlay until SSH answers, the runtime copied in, devices bound;
- payload: each suite in the guest (pytest, the kernel's C selftests), its TAP streamed
  into the cell directory, the console watched;
- triage: one record per test, the kernel's lines attributed, expectations applied;
- record: the cell's result and records handed to the run's results.

An infrastructure failure at any stage ends the cell as an `error` with the reason;
the other cells go on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lab.artifacts.kbuild import wanted_text
from lab.artifacts.selftests import SELFTESTS
from lab.core.cache import content_key, file_sha256, tree_digest
from lab.core.errors import InfraError
from lab.core.files import copy_file, make_dir, write_file
from lab.core.progress import Progress
from lab.model.arches import ARCHES
from lab.model.kernelspec import KERNEL_SOURCES
from lab.model.scenario import Cell
from lab.model.suites import DEFAULT_SUITE, SUITES
from lab.results import parity
from lab.results.outcomes import ERROR, FAIL, NOTRUN, PASS, SKIP, UNEXPECTED
from lab.results.records import TestRecord
from lab.results.summary import CellResult, empty_counts
from lab.results.tap import TapParser, TapResult
from lab.run import provenance as provenance_mod
from lab.run import triage
from lab.run.artifactkey import qemu_identity
from lab.run.booter import CellBooter, Prepared, ReadyGuest, device_configs
from lab.run.payload import (
    PYTEST_NO_TESTS,
    PYTEST_RAN,
    RUNTIME_DIR,
    TapStream,
    collect_dmesg,
    run_payload,
    run_selftests,
)
from lab.vm import console
from lab.vm.console import ConsoleWatch, Stop
from lab.vm.guest import Guest
from lab.vm.runclock import RunClock

CRASH_GRACE_S = 5.0
# How long SSH may take to answer once the console reports a stalled transmit queue (the
# kernel's watchdog fires after 5 s or more of it) before the network counts as dead.
NETWORK_PROBE_S = 20.0


@dataclass
class PayloadOutcome:
    taps: dict[str, TapParser]  # by suite, in the order they ran
    dmesg: list[str] | None  # None: the guest could not give it (it died, or was killed)
    stop: Stop | None  # why the payload ended early, if it did


def tap_file(suite: str) -> str:
    """Where a suite's TAP is kept in the cell directory (the lab's own: results.tap)."""
    return "results.tap" if suite == DEFAULT_SUITE else f"results.{suite}.tap"


class CellRun:
    def __init__(
        self,
        cell: Cell,
        cell_dir: Path,
        booter: CellBooter,
        pytest_args: list[str],
        progress: Progress,
        gdb_port: int | None = None,
        pytest_may_select_none: bool = False,
    ) -> None:
        self.cell = cell
        self.dir = cell_dir
        self.booter = booter
        self.pytest_args = pytest_args
        self.progress = progress
        self.gdb_port = gdb_port
        self.pytest_may_select_none = pytest_may_select_none

    def run(self) -> tuple[CellResult, list[TestRecord]]:
        make_dir(self.dir, exist_ok=False)
        started = time.monotonic()
        result = CellResult(
            name=self.cell.name,
            kernel=self.cell.kernel.label,
            verdict="error",
            counts=empty_counts(),
            dir=str(self.dir),
            wall_s=0.0,
            devices=[asdict(d) for d in device_configs(self.cell)],
        )
        records: list[TestRecord] = []
        try:
            prepared = self.prepare(result)
            outcome = self.boot_and_test(prepared, result)
            records = self.triage(outcome, result)
        except InfraError as e:
            result.infra_error = str(e)
            result.verdict = "error"
            self.progress(self.cell.name, f"infrastructure error: {str(e).splitlines()[0]}")
        finally:
            result.wall_s = round(time.monotonic() - started, 2)
            _placeholders(self.dir, result)
        return result, records

    # -- prepare ---------------------------------------------------------------------------
    def prepare(self, result: CellResult) -> Prepared:
        started = time.monotonic()
        prepared = self.booter.prepare(self.cell)
        result.artifacts_s = round(time.monotonic() - started, 2)
        result.kernel_build_s = prepared.kernel.build_s
        result.kernel_release = prepared.kernel.release
        result.kernel_identity = prepared.kernel.identity
        result.qemu = prepared.qemu.origin
        result.qemu_version = prepared.qemu.version
        result.qemu_patches = list(prepared.qemu.patches)
        result.qemu_build_s = prepared.qemu.build_s
        result.selftest_compat = [
            f"{b.suite}: {patch}" for b in prepared.selftests.values() for patch in b.compat
        ]
        result.identity = identity(self.cell, prepared, self.pytest_args)
        record = provenance(self.cell, prepared, self.pytest_args)
        write_file(self.dir / "provenance.json", json.dumps(record, indent=2) + "\n")
        keep_patches(self.cell, self.dir)
        return prepared

    # -- boot, then the payload --------------------------------------------------------------
    def boot_and_test(self, prepared: Prepared, result: CellResult) -> PayloadOutcome:
        with self.booter.ready(self.cell, prepared, self.dir, gdb_port=self.gdb_port) as ready:
            guest = ready.guest
            result.boot_to_ssh_s = round(guest.boot_to_ssh_s or 0.0, 2)
            result.snapshot = ready.snapshot
            result.phases_s = {"prepare": result.artifacts_s or 0.0, **ready.phases}
            self._check_guest(guest, prepared, result)
            payload_started = time.monotonic()
            outcome = self.payload(ready, prepared, result)
            result.phases_s["payload"] = round(time.monotonic() - payload_started, 2)
            stopping = time.monotonic()
        result.phases_s["teardown"] = round(time.monotonic() - stopping, 2)
        if guest.machine.abnormal and outcome.dmesg is not None:
            result.problems.append(guest.machine.abnormal)
        return outcome

    def _check_guest(self, guest: Guest, prepared: Prepared, result: CellResult) -> None:
        facts = provenance_mod.read_facts(guest.ssh)
        result.guest_release = facts.release
        result.container_provider = facts.container_provider
        wrong = provenance_mod.mismatches(facts, prepared.kernel)
        result.kernel_verified = not wrong
        result.problems += wrong

    def payload(self, ready: ReadyGuest, prepared: Prepared, result: CellResult) -> PayloadOutcome:
        """Run each suite in turn under one console watch, whose timeouts do not count the
        time the host kept QEMU from running; what the watch let pass (a network stall
        SSH survived) and that time are the cell's to show, however the payload ended."""
        guest = ready.guest
        p = self.cell.scenario.payload
        clock = RunClock.of_process(guest.machine.pid)
        watch = ConsoleWatch(
            self.dir / "console.log",
            p.stall_timeout,
            p.test_timeout,
            clock,
            lambda: guest.ssh.answers(NETWORK_PROBE_S),
        )
        try:
            return self._suites(ready, prepared, result, watch)
        finally:
            clock()
            result.host_wait_s = round(clock.held_s, 1)
            result.warnings += watch.warnings
            for warning in watch.warnings:
                self.progress(self.cell.name, f"warning: {warning}")

    def _suites(
        self, ready: ReadyGuest, prepared: Prepared, result: CellResult, watch: ConsoleWatch
    ) -> PayloadOutcome:
        """A guest that dies under a suite is told by its console, and the suites after it
        do not run."""
        guest = ready.guest
        p = self.cell.scenario.payload
        taps: dict[str, TapParser] = {}
        stop: Stop | None = None
        for suite in p.suites:
            stream = TapStream(self.dir / tap_file(suite), self._on_result())
            taps[suite] = stream.parser
            self.progress(self.cell.name, f"running {suite}")
            started = time.monotonic()
            stop, grace = self._run_suite(suite, ready, prepared, stream, watch)
            result.suite_s[suite] = round(time.monotonic() - started, 1)
            crashed = guest.machine.exit_status(wait=grace)
            if crashed is not None:
                dying_words = console.read_lines(self.dir / "console.log")
                result.problems.append(crash_report(crashed, dying_words))
                stop = stop or _death(dying_words)
            if stop is not None:
                result.problems.append(f"stopped early: {stop.kind}: {stop.message}")
                result.problems += [f"suite {s} not run" for s in p.suites[len(taps) :]]
                self.progress(self.cell.name, f"stopping the guest: {stop.message}")
                guest.abandon()
                return PayloadOutcome(taps, None, stop)
        return PayloadOutcome(taps, collect_dmesg(guest.ssh, self.dir), None)

    def _run_suite(
        self,
        suite: str,
        ready: ReadyGuest,
        prepared: Prepared,
        stream: TapStream,
        watch: ConsoleWatch,
    ) -> tuple[Stop | None, float]:
        """(why it stopped early, how long to give a guest that may be dying to exit)."""
        ssh, timeout = ready.guest.ssh, self.cell.scenario.payload.timeout
        log = self.dir / "payload.log"
        try:
            if suite == DEFAULT_SUITE:
                run = run_payload(
                    ssh,
                    self.cell.scenario,
                    self.pytest_args,
                    stream,
                    watch,
                    log,
                    self.pytest_may_select_none,
                )
            else:
                build = prepared.selftests[suite]
                bdf = ready.bound[0] if SUITES[suite].needs_device and ready.bound else None
                run = run_selftests(ssh, build, bdf, timeout, stream, watch, log)
            # A panicking guest drops SSH (no exit status) a moment before QEMU
            # (-no-reboot) finishes exiting.
            ran = run.pytest_status in PYTEST_RAN or run.pytest_status == PYTEST_NO_TESTS
            grace = CRASH_GRACE_S if run.stop is None and not ran else 0.0
            return run.stop, grace
        except InfraError:
            if ready.guest.machine.exit_status(wait=CRASH_GRACE_S) is None:
                raise
            return None, 0.0
        finally:
            stream.close()

    def _on_result(self) -> Callable[[TapResult], None]:
        def tell(r: TapResult) -> None:
            if r.outcome in UNEXPECTED:
                self.progress(self.cell.name, f"{r.outcome}: {r.name}")

        return tell

    # -- triage ----------------------------------------------------------------------------
    def triage(self, outcome: PayloadOutcome, result: CellResult) -> list[TestRecord]:
        # Only now, with QEMU gone, is the console complete (a panic's trace included).
        console_lines = console.read_lines(self.dir / "console.log")
        recs: list[TestRecord] = []
        problems: list[str] = []
        for suite, tap in outcome.taps.items():
            recs += triage.records(tap, outcome.dmesg, console_lines, outcome.stop, suite)
            problems += [
                p if suite == DEFAULT_SUITE else f"{suite}: {p}"
                for p in tap.problems() + triage.duplicates(tap)
            ]
        triage.expect(recs, self.cell.name, self.cell.scenario.expectations)
        result.counts = triage.counts(recs)
        kernel_log = outcome.dmesg if outcome.dmesg is not None else console_lines
        result.outside_alarms = triage.outside_alarms(kernel_log)
        result.problems = problems + result.problems + result.outside_alarms
        cell_parity = parity.cell_parity(self.cell.name, recs)
        result.parity, gate = parity.judge(cell_parity, self.cell.scenario.payload.parity)
        result.verdict = triage.verdict(recs, result.problems, gate)
        result.unexpected = [f"{r.name}: {r.outcome}" for r in recs if r.unexpected] + gate
        c = result.counts
        self.progress(
            self.cell.name,
            f"{result.verdict}: {c[PASS]} passed, {c[FAIL]} failed, {c[ERROR]} errors, "
            f"{c[NOTRUN]} not run, {c[SKIP]} skipped",
        )
        return recs


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
            "boot_image": str(prepared.kernel.boot_image),
            "initramfs_sha256": file_sha256(prepared.kernel.initramfs),
            "patches": [
                {"file": str(p), "sha256": file_sha256(p), "copy": copy}
                for p, copy in zip(cell.kernel.patches, patch_copies(cell), strict=True)
            ],
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
        "arch": cell.arch,
        "iommu": cell.iommu,
        "qemu": {
            "choice": s.machine.qemu,
            "binary": prepared.qemu.binary,
            "version": prepared.qemu.version,
            "patches": list(prepared.qemu.patches),
        },
    }


def identity(cell: Cell, prepared: Prepared, pytest_args: list[str]) -> dict[str, str]:
    """What the cell's outcomes can depend on, one digest or name per component (in the
    order of history.COMPONENTS): history tells a flip with a component changed (a
    regression, a fix) from one with none (flakiness)."""
    s, m, arch = cell.scenario, cell.scenario.machine, ARCHES[cell.arch]
    configurable = KERNEL_SOURCES[cell.kernel.source].configurable
    base = prepared.image.base.stat()
    machine = [m.memory, m.cpus, cell.iommu, sorted(m.hugepages.items()), m.cmdline, *arch.key()]
    wanted = wanted_text(cell.config, arch)
    return {
        "kernel": prepared.kernel.identity,
        "config": content_key(["config", wanted]) if configurable else "its own",
        "qemu": qemu_identity(m.qemu, arch),
        "payload": content_key(
            [
                "payload",
                tree_digest(s.payload_dir),
                tree_digest(RUNTIME_DIR),
                *s.payload.args,
                *pytest_args,
            ]
        ),
        # The recipe's key, and the image built from it: a rebuild (a newer mirror) is new.
        "rootfs": content_key([prepared.image.key, f"{base.st_size}:{base.st_mtime_ns}"]),
        "suites": content_key(["suites", *s.payload.suites, tree_digest(SELFTESTS)]),
        "machine": content_key(
            [
                "machine",
                json.dumps(machine),
                json.dumps([asdict(d) for d in s.devices]),
                prepared.accel,
            ]
        ),
    }


def patch_copies(cell: Cell) -> list[str]:
    """Where the cell's directory keeps a copy of each kernel patch, relative to it."""
    return [f"patches/{i:02d}-{p.name}" for i, p in enumerate(cell.kernel.patches, 1)]


def keep_patches(cell: Cell, cell_dir: Path) -> None:
    """The patches as they were, so that repro can apply them after the originals changed."""
    for patch, copy in zip(cell.kernel.patches, patch_copies(cell), strict=True):
        make_dir((cell_dir / copy).parent)
        copy_file(patch, cell_dir / copy)


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
            write_file(path, f"# {name} missing: {why}\n" if name != "qemu-argv.json" else "[]\n")
