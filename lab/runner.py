"""Running a scenario: prepare artifacts, boot each cell, run the payload, record results."""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab import accel as accel_mod
from lab import console, rootfs
from lab.cache import Cache
from lab.errors import InfraError
from lab.kernels import KERNEL_SOURCES, KernelArtifact
from lab.keys import LabKeys, ensure_keys
from lab.machine import Machine, free_port
from lab.models import Accel
from lab.payload import collect_dmesg, run_payload
from lab.progress import SILENT, Progress
from lab.qemu import DeviceConfig, VMConfig
from lab.results import CellResult, RunResults, empty_counts, verdict
from lab.scenario import Cell, Scenario, expand
from lab.tap import TapParser

CRASH_GRACE_S = 5.0


@dataclass
class RunOptions:
    results_root: Path
    accel: str | None = None  # overrides the scenario's
    pytest_args: list[str] = field(default_factory=list)


def cell_dirname(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", name)


def vm_config(
    cell: Cell,
    kernel: KernelArtifact,
    accel: Accel,
    disk: Path,
    scratch: Path,
    cell_dir: Path,
    ssh_port: int,
) -> VMConfig:
    """The machine a cell boots: a pure function of the cell and the paths chosen for it."""
    m = cell.scenario.machine
    return VMConfig(
        name=f"vfio-lab:{cell.name}",
        accel=accel,
        kernel=kernel.vmlinuz,
        initrd=kernel.initramfs,
        disk=disk,
        console_log=cell_dir / "console.log",
        qmp_socket=scratch / "qmp.sock",
        ssh_port=ssh_port,
        memory_mib=m.memory >> 20,
        cpus=m.cpus,
        iommu=m.iommu,
        devices=tuple(DeviceConfig(d.type, d.dma_mask) for d in cell.scenario.devices),
        hugepages=tuple(sorted(m.hugepages.items())),
        extra_cmdline=tuple(m.cmdline),
        qemu=m.qemu,
    )


def new_run_dir(results_root: Path) -> tuple[str, Path]:
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    run_dir = results_root / run_id
    run_dir.mkdir(parents=True)
    latest = results_root / "latest"
    tmp = results_root / f".latest-{run_id}"
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
        self.run_id, self.run_dir = new_run_dir(opts.results_root)
        (self.run_dir / "scenario.yaml").write_bytes(scenario.file.read_bytes())
        self.results = RunResults(
            self.run_dir, scenario.name, self.run_id, "pending", "not chosen yet"
        )
        self._accel: accel_mod.AccelChoice | None = None
        self._keys: LabKeys | None = None
        self._rootfs: rootfs.RootfsImage | None = None

    def run(self, cells: list[Cell] | None = None) -> RunResults:
        """Run every cell, one after the other; a cell's failure does not stop the others."""
        cells = expand(self.scenario) if cells is None else cells
        for i, cell in enumerate(cells, 1):
            self.progress("run", f"cell {i}/{len(cells)}: {cell.name}")
            self.results.add(self.run_cell(cell))
        return self.results

    def choose_accel(self, kernel: KernelArtifact) -> Accel:
        if self._accel is None:
            requested = self.opts.accel or self.scenario.accel
            qemu = self.scenario.machine.qemu
            self._accel = accel_mod.choose(
                requested, qemu, kernel.vmlinuz, kernel.vmlinuz_sha256, self.cache
            )
            self.progress("accel", f"{self._accel.accel}: {self._accel.reason}")
            self.results.set_accelerator(self._accel.accel, self._accel.reason)
        return self._accel.accel

    def shared_artifacts(self) -> tuple[LabKeys, rootfs.RootfsImage]:
        if self._keys is None or self._rootfs is None:
            self._keys = ensure_keys(self.cache)
            self._rootfs = rootfs.ensure_rootfs(self.cache, self._keys, self.progress)
        return self._keys, self._rootfs

    def run_cell(self, cell: Cell) -> CellResult:
        cell_dir = self.run_dir / cell_dirname(cell.name)
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
        keys, image = self.shared_artifacts()
        kernel = KERNEL_SOURCES[cell.kernel.source].prepare(cell.kernel, self.cache, self.progress)
        result.artifacts_s = round(time.monotonic() - started, 2)
        result.kernel_release, result.kernel_identity = kernel.release, kernel.identity
        accel = self.choose_accel(kernel)
        with self.cache.scratch("vm-") as scratch:
            overlay = scratch / "overlay.qcow2"
            rootfs.create_overlay(image.base, overlay)
            cfg = vm_config(cell, kernel, accel, overlay, scratch, cell_dir, free_port())
            with Machine(cfg, keys.client, keys.host_pub, cell_dir / "qemu.log") as machine:
                (cell_dir / "qemu-argv.json").write_text(json.dumps(machine.argv, indent=2) + "\n")
                self.progress(
                    cell.name, f"booting ({accel}, {cfg.memory_mib} MiB, {cfg.cpus} vCPUs)"
                )
                result.boot_to_ssh_s = round(
                    machine.wait_ready(self.scenario.machine.boot_timeout), 2
                )
                result.qemu_version = _qemu_version(machine)
                self.progress(cell.name, f"SSH up after {result.boot_to_ssh_s:.1f} s")
                tap = self._payload(machine, cell_dir, kernel, result)
        result.counts = tap.counts()
        result.problems = tap.problems() + result.problems
        result.verdict = "error" if result.problems else verdict(tap)
        c = result.counts
        self.progress(
            cell.name,
            f"{result.verdict}: {c['pass']} passed, {c['fail']} failed, {c['skip']} skipped",
        )

    def _payload(
        self, machine: Machine, cell_dir: Path, kernel: KernelArtifact, result: CellResult
    ) -> TapParser:
        """Run the payload; a guest that dies under it is the cell's error, told by its console."""
        try:
            run = run_payload(
                machine.ssh,
                self.scenario,
                cell_dir,
                kernel.vmlinuz.parent / "config",
                self.opts.pytest_args,
                self.progress,
            )
            tap = run.tap
        except InfraError:
            # A panicking guest drops SSH a moment before QEMU (-no-reboot) finishes exiting.
            if machine.exit_status(wait=CRASH_GRACE_S) is None:
                raise
            tap = TapParser()
        finally:
            collect_dmesg(machine.ssh, cell_dir)
        crashed = machine.exit_status()
        if crashed is not None:
            result.problems.append(crash_report(crashed, cell_dir / "console.log"))
        return tap


def crash_report(exit_code: int, console_log: Path) -> str:
    """What the console says about a guest that died: the kernel's alarm lines, then the tail."""
    lines = console.read_lines(console_log)
    alarms = "".join(f"\n  ! {line}" for line in console.crash_lines(lines))
    tail = "".join(f"\n  | {line}" for line in lines[-15:])
    return f"QEMU exited during the payload (exit code {exit_code}){alarms}\nconsole tail:{tail}"


def _placeholders(cell_dir: Path, result: CellResult) -> None:
    """Every cell directory has the same files; one the cell never got to says why."""
    why = result.infra_error.splitlines()[0] if result.infra_error else "not produced"
    for name in ("results.tap", "dmesg.txt", "console.log", "qemu-argv.json"):
        path = cell_dir / name
        if not path.exists():
            path.write_text(f"# {name} missing: {why}\n" if name != "qemu-argv.json" else "[]\n")


def _qemu_version(machine: Machine) -> str:
    info = machine.query("query-version")
    assert isinstance(info, dict)
    q = info["qemu"]
    return f"{q['major']}.{q['minor']}.{q['micro']}{info.get('package', '')}"
