"""Booting one cell's guest, the one path `run`, `shell` and `repro` share.

Artifacts (keys, root filesystem, kernel) are prepared once per booter, the
accelerator is chosen once, and every guest runs on its own overlay in a scratch
directory that is removed when the guest stops, unless the caller keeps the overlay.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lab import accel as accel_mod
from lab import rootfs
from lab.cache import Cache
from lab.errors import UsageError
from lab.kbuild import UnknownOption
from lab.kernels import KERNEL_SOURCES, KernelArtifact, SpecError
from lab.keys import LabKeys, ensure_keys
from lab.machine import Machine, free_port
from lab.models import Accel
from lab.progress import SILENT, Progress
from lab.qemu import DeviceConfig, VMConfig
from lab.scenario import Cell


@dataclass(frozen=True)
class Prepared:
    keys: LabKeys
    image: rootfs.RootfsImage
    kernel: KernelArtifact
    accel: Accel


def vm_config(
    cell: Cell,
    kernel: KernelArtifact,
    accel: Accel,
    disk: Path,
    scratch: Path,
    cell_dir: Path,
    ssh_port: int,
    gdb_port: int | None = None,
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
        user_qmp_socket=scratch / "qmp-user.sock",
        gdb_port=gdb_port,
    )


def check_port_free(port: int) -> None:
    """Before anything boots: a gdb port already taken is the user's to change (exit 2)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise UsageError(
                f"--gdb: port {port} on 127.0.0.1 is not free ({e.strerror})"
            ) from None


class CellBooter:
    def __init__(
        self,
        cache: Cache,
        progress: Progress = SILENT,
        accel: str | None = None,
        on_accel: Callable[[accel_mod.AccelChoice], None] | None = None,
    ) -> None:
        self.cache = cache
        self.progress = progress
        self.accel_override = accel
        self.on_accel = on_accel
        self._accel: accel_mod.AccelChoice | None = None
        self._shared: tuple[LabKeys, rootfs.RootfsImage] | None = None
        self._lock = threading.Lock()  # cells may be prepared from several threads
        self.active: set[Machine] = set()

    def stop_all(self) -> None:
        """Stop every guest this booter has running (Ctrl-C with parallel cells)."""
        for machine in list(self.active):
            machine.shutdown(timeout=2.0)

    def prepare(self, cell: Cell) -> Prepared:
        with self._lock:
            if self._shared is None:
                keys = ensure_keys(self.cache)
                self._shared = keys, rootfs.ensure_rootfs(self.cache, keys, self.progress)
        keys, image = self._shared
        source = KERNEL_SOURCES[cell.kernel.source]
        try:
            kernel = source.prepare(cell.kernel, self.cache, self.progress, cell.config)
        except UnknownOption as e:
            raise cell.scenario.error(f"config.{e.option}", str(e)) from None
        except SpecError as e:
            raise cell.scenario.error(cell.kernel_field, str(e)) from None
        with self._lock:
            accel = self._choose_accel(cell, kernel)
        return Prepared(keys, image, kernel, accel)

    def _choose_accel(self, cell: Cell, kernel: KernelArtifact) -> Accel:
        if self._accel is None:
            requested = self.accel_override or cell.scenario.accel
            self._accel = accel_mod.choose(
                requested,
                cell.scenario.machine.qemu,
                kernel.vmlinuz,
                kernel.vmlinuz_sha256,
                self.cache,
            )
            self.progress("accel", f"{self._accel.accel}: {self._accel.reason}")
            if self.on_accel is not None:
                self.on_accel(self._accel)
        return self._accel.accel

    @contextlib.contextmanager
    def boot(
        self,
        cell: Cell,
        prepared: Prepared,
        cell_dir: Path,
        *,
        disk: Path | None = None,
        keep_disk: Path | None = None,
        gdb_port: int | None = None,
    ) -> Iterator[Machine]:
        """A ready guest (SSH answers). `disk` reuses an existing overlay; `keep_disk` moves the
        fresh one there when the guest stops instead of deleting it."""
        with self.cache.scratch("vm-") as scratch:
            overlay = disk or scratch / "overlay.qcow2"
            if disk is None:
                rootfs.create_overlay(prepared.image.base, overlay)
            cfg = vm_config(
                cell,
                prepared.kernel,
                prepared.accel,
                overlay,
                scratch,
                cell_dir,
                free_port(),
                gdb_port,
            )
            try:
                with Machine(
                    cfg,
                    prepared.keys.client,
                    prepared.keys.host_pub,
                    cell_dir / "qemu.log",
                    announce_dir=self.cache.root / "running",
                ) as machine:
                    self.active.add(machine)
                    (cell_dir / "qemu-argv.json").write_text(
                        json.dumps(machine.argv, indent=2) + "\n"
                    )
                    self.progress(
                        cell.name,
                        f"booting ({prepared.accel}, {cfg.memory_mib} MiB, {cfg.cpus} vCPUs)",
                    )
                    boot = machine.wait_ready(cell.scenario.machine.boot_timeout)
                    self.progress(cell.name, f"SSH up after {boot:.1f} s")
                    try:
                        yield machine
                    finally:
                        self.active.discard(machine)
            finally:
                if keep_disk is not None and disk is None and overlay.exists():
                    keep_disk.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(overlay, keep_disk)
