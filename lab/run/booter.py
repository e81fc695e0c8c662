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
from dataclasses import dataclass, field
from pathlib import Path

from lab.build import rootfs
from lab.build.kbuild import UnknownOption
from lab.build.kernels import KERNEL_BUILDERS, KernelArtifact
from lab.build.keys import LabKeys, ensure_keys
from lab.build.qemu import QemuBinary, provide_qemu
from lab.build.selftests import SelftestBuild, provide_selftests
from lab.core.cache import Cache
from lab.core.errors import InfraError, UsageError
from lab.core.proc import stop_running
from lab.core.progress import SILENT, Progress
from lab.run.payload import bind_devices, install_runtime
from lab.spec.kernelspec import SpecError
from lab.spec.scenario import Cell, DeviceSpec
from lab.spec.suites import SUITES
from lab.spec.variants import DEVICES, Accel, DeviceConfig
from lab.vm import accel as accel_mod
from lab.vm import inventory
from lab.vm.guest import Guest
from lab.vm.machine import Machine
from lab.vm.qemu import VMConfig, build_argv
from lab.vm.ssh import GuestSSH


@dataclass(frozen=True)
class Prepared:
    keys: LabKeys
    image: rootfs.RootfsImage
    kernel: KernelArtifact
    qemu: QemuBinary
    accel: Accel
    selftests: dict[str, SelftestBuild] = field(default_factory=dict)  # the C suites, by name


def device_configs(cell: Cell) -> tuple[DeviceConfig, ...]:
    return tuple(device_config(d) for d in cell.scenario.devices)


def device_config(d: DeviceSpec) -> DeviceConfig:
    if d.bar is None:
        return DeviceConfig(d.type, d.dma_mask)
    index = d.bar.index or DEVICES[d.type].fixed_bar_index or 1
    return DeviceConfig(d.type, d.dma_mask, d.bar.size, index)


def vm_config(
    cell: Cell,
    kernel: KernelArtifact,
    qemu: str,
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
        devices=device_configs(cell),
        hugepages=tuple(sorted(m.hugepages.items())),
        extra_cmdline=tuple(m.cmdline),
        qemu=qemu,
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
        self._qemu: dict[str, QemuBinary] = {}
        self._lock = threading.Lock()  # cells may be prepared from several threads
        self.active: set[Guest] = set()
        self.stopping = threading.Event()

    def stop_all(self) -> None:
        """Ctrl-C with parallel cells: no cell prepares or boots from now on, the builds
        under way stop, and every guest this booter has running is stopped."""
        self.stopping.set()
        stop_running()
        for guest in list(self.active):
            guest.machine.shutdown(timeout=2.0)

    def _check_stopping(self) -> None:
        if self.stopping.is_set():
            raise InfraError("the run was interrupted")

    def prepare(self, cell: Cell) -> Prepared:
        self._check_stopping()
        with self._lock:
            if self._shared is None:
                keys = ensure_keys(self.cache)
                self._shared = keys, rootfs.ensure_rootfs(self.cache, keys, self.progress)
        keys, image = self._shared
        source = KERNEL_BUILDERS[cell.kernel.source]
        try:
            kernel = source.prepare(cell.kernel, self.cache, self.progress, cell.config)
        except UnknownOption as e:
            raise cell.scenario.error(f"config.{e.option}", str(e)) from None
        except SpecError as e:
            raise cell.scenario.error(cell.kernel_field, str(e)) from None
        with self._lock:
            qemu = self._provide_qemu(cell.scenario.machine.qemu)
            accel = self._choose_accel(cell, kernel, qemu)
        return Prepared(keys, image, kernel, qemu, accel, self._selftests(cell))

    def _selftests(self, cell: Cell) -> dict[str, SelftestBuild]:
        """The C suites the cell runs, built from its own kernel's tree."""
        suites = [SUITES[s] for s in cell.scenario.payload.suites if SUITES[s].selftest_dir]
        if not suites:
            return {}
        tree = KERNEL_BUILDERS[cell.kernel.source].source_tree(
            cell.kernel, self.cache, self.progress
        )
        return {s.name: provide_selftests(s, tree, self.cache, self.progress) for s in suites}

    def _provide_qemu(self, choice: str) -> QemuBinary:
        """Once per booter: the lab's QEMU may need building (and a build uses every core)."""
        if choice not in self._qemu:
            self._qemu[choice] = provide_qemu(choice, self.cache, self.progress)
        return self._qemu[choice]

    def _choose_accel(self, cell: Cell, kernel: KernelArtifact, qemu: QemuBinary) -> Accel:
        if self._accel is None:
            requested = self.accel_override or cell.scenario.accel
            self._accel = accel_mod.choose(
                requested,
                qemu.binary,
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
    ) -> Iterator[Guest]:
        """A ready guest (SSH answers). `disk` reuses an existing overlay; `keep_disk` moves the
        fresh one there when the guest stops instead of deleting it."""
        self._check_stopping()
        with self.cache.scratch("vm-") as scratch:
            overlay = disk or scratch / "overlay.qcow2"
            if disk is None:
                rootfs.create_overlay(prepared.image.base, overlay)
            cfg = vm_config(
                cell,
                prepared.kernel,
                prepared.qemu.binary,
                prepared.accel,
                overlay,
                scratch,
                cell_dir,
                free_port(),
                gdb_port,
            )
            argv = build_argv(cfg)
            (cell_dir / "qemu-argv.json").write_text(json.dumps(argv, indent=2) + "\n")
            try:
                with self._guest(cfg, argv, prepared, cell_dir, kept=disk or keep_disk) as guest:
                    self.progress(
                        cell.name,
                        f"booting ({prepared.accel}, {cfg.memory_mib} MiB, {cfg.cpus} vCPUs)",
                    )
                    boot = guest.wait_ready(cell.scenario.machine.boot_timeout)
                    self.progress(cell.name, f"SSH up after {boot:.1f} s")
                    yield guest
            finally:
                if keep_disk is not None and disk is None and overlay.exists():
                    keep_disk.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(overlay, keep_disk)

    @contextlib.contextmanager
    def _guest(
        self, cfg: VMConfig, argv: list[str], prepared: Prepared, cell_dir: Path, kept: Path | None
    ) -> Iterator[Guest]:
        """QEMU launched, announced to `vfio-lab qmp`/`console`, and tracked for stop_all."""
        ssh = GuestSSH(cfg.ssh_port, prepared.keys.client, prepared.keys.host_pub)
        machine = Machine(argv, cfg.qmp_socket, cell_dir / "qemu.log", cfg.console_log)
        with machine, Guest(cfg.name, machine, ssh, sync_on_exit=kept is not None) as guest:
            record = inventory.RunningVM(
                id=cfg.qmp_socket.parent.name,
                name=cfg.name,
                pid=machine.pid or -1,
                ssh_port=cfg.ssh_port,
                qmp_socket=str(cfg.user_qmp_socket or ""),
                console_log=str(cfg.console_log),
            )
            with inventory.announced(self.cache.root / "running", record):
                self.active.add(guest)
                try:
                    yield guest
                finally:
                    self.active.discard(guest)

    @contextlib.contextmanager
    def ready(
        self,
        cell: Cell,
        prepared: Prepared,
        cell_dir: Path,
        *,
        bind: bool = True,
        disk: Path | None = None,
        keep_disk: Path | None = None,
        gdb_port: int | None = None,
    ) -> Iterator[ReadyGuest]:
        """The boot sequence `run` and `shell` share: a booted guest with the lab's runtime,
        the cell's tests and kernel config copied in, and the devices bound to vfio-pci."""
        with self.boot(
            cell, prepared, cell_dir, disk=disk, keep_disk=keep_disk, gdb_port=gdb_port
        ) as guest:
            files = install_runtime(guest.ssh, cell.scenario.payload_dir, prepared.kernel.config)
            self.progress(cell.name, f"copied {files} files from {cell.scenario.payload_dir}")
            bound = bind_devices(guest.ssh, cell.scenario) if bind else []
            if bound:
                self.progress(cell.name, f"bound {' '.join(bound)} to vfio-pci")
            yield ReadyGuest(guest, bound)


@dataclass(frozen=True)
class ReadyGuest:
    guest: Guest
    bound: list[str]  # the devices' BDFs, now on vfio-pci


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 for the SSH forward."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
