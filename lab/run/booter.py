"""Booting one cell's guest, the one path `run`, `shell` and `repro` share.

Artifacts (keys, root filesystem, kernel) are prepared once per booter, the
accelerator is chosen once, and every guest runs on its own overlay in a scratch
directory that is removed when the guest stops, unless the caller keeps the overlay.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lab.artifacts import rootfs
from lab.artifacts.kbuild import UnknownOption
from lab.artifacts.kconfig import parse_config
from lab.artifacts.kernels import KERNEL_BUILDERS, KernelArtifact
from lab.artifacts.keys import LabKeys, ensure_keys
from lab.artifacts.qemu import QemuBinary, provide_qemu
from lab.artifacts.selftests import SelftestBuild, payload_programs, provide_selftests
from lab.core import cachegc
from lab.core.cache import Cache, content_key, tree_digest
from lab.core.errors import HostIOError, InfraError, LaunchError, UsageError
from lab.core.files import copy_file, make_dir, move, write_file
from lab.core.proc import stop_running
from lab.core.progress import SILENT, Progress
from lab.model.kernelspec import SpecError
from lab.model.scenario import Cell, DeviceSpec
from lab.model.suites import SUITES
from lab.model.variants import DEVICES, IOMMU_MODELS, Accel, DeviceConfig
from lab.run.payload import GUEST_RUNTIME, RUNTIME_DIR, bind_devices, install_runtime
from lab.vm import accel as accel_mod
from lab.vm import bootclock, inventory, snapshot
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
    cpu: accel_mod.GuestCpu  # what the guest sees of the host's CPU under `accel`
    selftests: dict[str, SelftestBuild] = field(default_factory=dict)  # the C suites, by name


def device_configs(cell: Cell) -> tuple[DeviceConfig, ...]:
    return tuple(device_config(d) for d in cell.scenario.devices)


def device_config(d: DeviceSpec) -> DeviceConfig:
    delay = None if d.dma_delay is None else int(d.dma_delay)
    if d.bar is None:
        return DeviceConfig(d.type, d.dma_mask, dma_delay_ns=delay)
    index = d.bar.index or DEVICES[d.type].fixed_bar_index or 1
    return DeviceConfig(d.type, d.dma_mask, d.bar.size, index, delay)


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
    console_append: bool = False,
) -> VMConfig:
    """The machine a cell boots: a pure function of the cell and the paths chosen for it."""
    m = cell.scenario.machine
    return VMConfig(
        name=f"vfio-lab:{cell.name}",
        accel=accel,
        kernel=kernel.boot_image,
        initrd=kernel.initramfs,
        disk=disk,
        console_log=cell_dir / "console.log",
        qmp_socket=scratch / "qmp.sock",
        ssh_port=ssh_port,
        memory_mib=m.memory >> 20,
        cpus=m.cpus,
        iommu=cell.iommu,
        devices=device_configs(cell),
        hugepages=tuple(sorted(m.hugepages.items())),
        extra_cmdline=tuple(m.cmdline),
        qemu=qemu,
        user_qmp_socket=scratch / "qmp-user.sock",
        gdb_port=gdb_port,
        console_append=console_append,
    )


# Bump when what a snapshot holds, or how it is restored, changes.
SNAPSHOT_FORMAT = "2"


def snapshot_key(cell: Cell, prepared: Prepared, bind: bool) -> str:
    """Everything a test-ready guest's state depends on: the machine (its command line with
    the per-boot paths and ports left out), the QEMU that runs it (version and file), the
    CPU the guest sees (under KVM, the host's model and flags), the root filesystem, and
    what the lab copied in and bound."""
    k = prepared.kernel
    cfg = vm_config(
        cell, k, prepared.qemu.binary, prepared.accel, Path("d"), Path("v"), Path("c"), 0
    )
    argv = build_argv(dataclasses.replace(cfg, name="vfio-lab"))
    binary = Path(shutil.which(prepared.qemu.binary) or prepared.qemu.binary).stat()
    # The snapshot's disk is a layer on this very image: a rebuilt one (same recipe, a
    # newer mirror) is another key.
    base = prepared.image.base.stat()
    return content_key(
        [
            "snapshot",
            SNAPSHOT_FORMAT,
            json.dumps(argv),
            prepared.qemu.version,
            f"{binary.st_size}:{binary.st_mtime_ns}",
            prepared.cpu.key(),
            k.vmlinuz_sha256,
            prepared.image.key,
            f"{base.st_size}:{base.st_mtime_ns}",
            tree_digest(RUNTIME_DIR),
            tree_digest(cell.scenario.payload_dir),
            "bind" if bind else "no-bind",
        ]
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
        snapshots: bool = True,
    ) -> None:
        self.cache = cache
        self.progress = progress
        self.snapshots = snapshots
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
        _check_model(cell, kernel)
        with self._lock:
            qemu = self._provide_qemu(cell.scenario.machine.qemu)
            accel = self._choose_accel(cell, kernel, qemu)
        cpu = accel_mod.guest_cpu(accel, accel_mod.host_cpuinfo())
        return Prepared(keys, image, kernel, qemu, accel, cpu, self._selftests(cell))

    def _selftests(self, cell: Cell) -> dict[str, SelftestBuild]:
        """The C suites the cell runs, built from its own kernel's tree, and the payload's
        own programs."""
        suites = [SUITES[s] for s in cell.scenario.payload.suites]
        out = {
            s.name: payload_programs(s, cell.scenario.payload_dir) for s in suites if s.programs_dir
        }
        built = [s for s in suites if s.selftest_dir]
        if built:
            tree = KERNEL_BUILDERS[cell.kernel.source].source_tree(
                cell.kernel, self.cache, self.progress
            )
            out |= {s.name: provide_selftests(s, tree, self.cache, self.progress) for s in built}
        return out

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
            cfg = self._config(cell, prepared, overlay, scratch, cell_dir, gdb_port)
            argv = self._argv(cfg, cell_dir)
            try:
                with (
                    self._guest(cfg, argv, prepared, cell_dir, kept=disk or keep_disk) as guest,
                    bootclock.watching(cfg.console_log) as marks,
                ):
                    self._booting(cell, cfg, prepared)
                    boot = guest.wait_ready(cell.scenario.machine.boot_timeout)
                    m = guest.machine
                    guest.phases = marks.phases(m.qmp_up, m.started, m.started + boot)
                    self.progress(cell.name, f"SSH up after {boot:.1f} s")
                    yield guest
            finally:
                if keep_disk is not None and disk is None and overlay.exists():
                    make_dir(keep_disk.parent)
                    move(overlay, keep_disk)

    def _config(
        self,
        cell: Cell,
        prepared: Prepared,
        overlay: Path,
        scratch: Path,
        cell_dir: Path,
        gdb_port: int | None = None,
        console_append: bool = False,
    ) -> VMConfig:
        q, k, a = prepared.qemu.binary, prepared.kernel, prepared.accel
        port = free_port()
        return vm_config(cell, k, q, a, overlay, scratch, cell_dir, port, gdb_port, console_append)

    def _argv(self, cfg: VMConfig, cell_dir: Path, incoming_fd: int | None = None) -> list[str]:
        argv = build_argv(cfg)
        if incoming_fd is not None:
            argv = snapshot.restore_argv(argv, incoming_fd)
        write_file(cell_dir / "qemu-argv.json", json.dumps(argv, indent=2) + "\n")
        return argv

    def _booting(self, cell: Cell, cfg: VMConfig, prepared: Prepared, how: str = "booting") -> None:
        self.progress(
            cell.name, f"{how} ({prepared.accel}, {cfg.memory_mib} MiB, {cfg.cpus} vCPUs)"
        )

    @contextlib.contextmanager
    def _guest(
        self,
        cfg: VMConfig,
        argv: list[str],
        prepared: Prepared,
        cell_dir: Path,
        kept: Path | None,
        pass_fds: tuple[int, ...] = (),
    ) -> Iterator[Guest]:
        """QEMU launched, announced to `vfio-lab qmp`/`console`, and tracked for stop_all."""
        ssh = GuestSSH(cfg.ssh_port, prepared.keys.client, prepared.keys.host_pub)
        machine = Machine(argv, cfg.qmp_socket, cell_dir / "qemu.log", cfg.console_log, pass_fds)
        guest = Guest(cfg.name, machine, ssh, sync_on_exit=kept is not None, disk=cfg.disk)
        with machine, guest:
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
        """The boot sequence `run`, `shell` and `repro` share: a guest with the lab's runtime,
        the cell's tests and kernel config copied in, and the devices bound to vfio-pci.

        Restored from the machine's snapshot where one is valid (made first if missing, made
        again if it fails to load); booted cold where the caller keeps or brings a disk,
        watches the boot with gdb, or turned snapshots off."""
        why_not = self._no_snapshot(disk, keep_disk, gdb_port)
        if why_not is None:
            key = snapshot_key(cell, prepared, bind)
            why_not = self.cache.recall(["unsnapshotable", key])
        if why_not is not None:
            with self._cold(
                cell, prepared, cell_dir, bind, disk, keep_disk, gdb_port, why_not
            ) as r:
                yield r
            return
        yield from self._from_snapshot(cell, prepared, cell_dir, key, bind)

    def _no_snapshot(
        self, disk: Path | None, keep_disk: Path | None, gdb_port: int | None
    ) -> str | None:
        if not self.snapshots:
            return "--no-snapshot"
        if disk is not None or keep_disk is not None:
            return "the guest's disk is kept"
        if gdb_port is not None:
            return "--gdb watches the boot"
        return None

    @contextlib.contextmanager
    def _cold(
        self,
        cell: Cell,
        prepared: Prepared,
        cell_dir: Path,
        bind: bool,
        disk: Path | None = None,
        keep_disk: Path | None = None,
        gdb_port: int | None = None,
        why: str = "",
    ) -> Iterator[ReadyGuest]:
        """A cold boot to test-ready; `why` there is no snapshot, when there is none."""
        with self.boot(
            cell, prepared, cell_dir, disk=disk, keep_disk=keep_disk, gdb_port=gdb_port
        ) as guest:
            started = time.monotonic()
            files = install_runtime(guest.ssh, cell.scenario.payload_dir, prepared.kernel.config)
            self.progress(cell.name, f"copied {files} files from {cell.scenario.payload_dir}")
            bound = bind_devices(guest.ssh, cell.scenario) if bind else []
            if bound:
                self.progress(cell.name, f"bound {' '.join(bound)} to vfio-pci")
            setup = round(time.monotonic() - started, 2)
            snapshot_use = f"none: {why}" if why else ""
            yield ReadyGuest(guest, bound, snapshot_use, {**guest.phases, "setup": setup})

    def _from_snapshot(
        self, cell: Cell, prepared: Prepared, cell_dir: Path, key: str, bind: bool
    ) -> Iterator[ReadyGuest]:
        """The machine's snapshot restored; where there is none yet, a cold boot that is
        saved on the way and goes on (a restore would only cost the first run time)."""
        for attempt in (1, 2):
            with contextlib.ExitStack() as stack:
                ready, failed = self._start(cell, prepared, cell_dir, key, bind, stack)
                if ready is not None:
                    yield ready
                    return
            assert failed is not None
            if failed.action == "save":
                break
            if attempt == 2:
                raise failed
            self.progress(
                cell.name, f"snapshot {key} did not restore ({failed.reason}); making it again"
            )
        # The save failed: this machine boots cold (from now on, if QEMU refuses it).
        assert failed is not None
        if failed.permanent:
            self.cache.remember(["unsnapshotable", key], failed.reason)
        self.progress(cell.name, f"no snapshot of this machine: {failed.reason}")
        with self._cold(cell, prepared, cell_dir, bind, why=failed.reason) as cold:
            yield cold

    def _start(
        self,
        cell: Cell,
        prepared: Prepared,
        cell_dir: Path,
        key: str,
        bind: bool,
        stack: contextlib.ExitStack,
    ) -> tuple[ReadyGuest | None, snapshot.SnapshotFailed | None]:
        """Restore the snapshot, or boot cold and save it, with the guest's cleanup in
        `stack`. A snapshot that did not restore is removed under its lock, so that no
        other run takes it meanwhile."""
        with self.cache.lock(f"snapshot-{key}"):
            try:
                made_by = _snapshot_made_by(cell, prepared)
                if self.cache.intact("snapshots", key, self.progress, made_by):
                    return stack.enter_context(self._restore(cell, prepared, cell_dir, key)), None
                return stack.enter_context(self._saved(cell, prepared, cell_dir, key, bind)), None
            except snapshot.SnapshotFailed as e:
                stack.close()
                if e.action == "restore":
                    shutil.rmtree(self.cache.entry("snapshots", key), ignore_errors=True)
                return None, e

    @contextlib.contextmanager
    def _saved(
        self, cell: Cell, prepared: Prepared, cell_dir: Path, key: str, bind: bool
    ) -> Iterator[ReadyGuest]:
        """A cold boot to test-ready, saved as the machine's snapshot, then let run on."""
        with self._cold(cell, prepared, cell_dir, bind) as ready:
            guest = ready.guest
            started = time.monotonic()
            try:
                made_by = _snapshot_made_by(cell, prepared)
                with self.cache.build("snapshots", key, made_by) as entry:
                    guest.ssh.check(["python3", f"{GUEST_RUNTIME}/lab_guest.py", "snapshot-save"])
                    guest.ssh.close()
                    snapshot.save(guest.machine, entry / snapshot.STATE, SAVE_TIMEOUT_S)
                    # QEMU flushed and let go of the overlay when the migration completed: a
                    # copy is the disk as the saved state knows it.
                    copy_file(guest.disk, entry / snapshot.DISK)
                    copy_file(cell_dir / "console.log", entry / snapshot.CONSOLE)
                    meta = {
                        "bound": ready.bound,
                        "boot_to_ssh_s": guest.boot_to_ssh_s,
                        "cpu": prepared.cpu.as_json(),
                    }
                    write_file(entry / snapshot.META, json.dumps(meta, indent=2) + "\n")
            except HostIOError as e:
                # A snapshot only saves time: one the host cannot hold (a full cache disk)
                # is a failed save, like a state QEMU could not write, and the cell goes on.
                raise snapshot.SnapshotFailed("save", str(e)) from e
            guest.machine.query("cont")
            guest.ssh.connect()
            seconds = time.monotonic() - started
            size = (self.cache.entry("snapshots", key) / snapshot.STATE).stat().st_size >> 20
            self.progress(cell.name, f"saved snapshot {key}: {size} MiB in {seconds:.1f} s")
            for old in cachegc.keep_newest(self.cache, "snapshots", SNAPSHOTS_KEPT):
                self.progress(cell.name, f"removed the least recently used snapshot {old.key}")
            ready.snapshot = f"saved {key}"
            ready.phases["snapshot_save"] = round(seconds, 2)
            yield ready

    @contextlib.contextmanager
    def _restore(
        self, cell: Cell, prepared: Prepared, cell_dir: Path, key: str
    ) -> Iterator[ReadyGuest]:
        """A guest started from the snapshot, its clock, entropy and devices made current.
        One saved on another CPU is refused before QEMU starts: its guest may use a feature
        this CPU lacks, and fault mid-test."""
        self._check_stopping()
        entry = self.cache.entry("snapshots", key)
        try:  # another run may have just pruned it
            meta = json.loads((entry / snapshot.META).read_text())
            bound = list(meta["bound"])
            if why := prepared.cpu.unlike(accel_mod.GuestCpu.from_json(meta["cpu"])):
                raise snapshot.SnapshotFailed("restore", why)
            console = (entry / snapshot.CONSOLE).read_bytes()
            state = (entry / snapshot.STATE).open("rb")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise snapshot.SnapshotFailed("restore", f"its files: {e}") from e
        with state, self.cache.scratch("vm-") as scratch:
            # Written apart from the reads above: a failure here is the cell directory's
            # (a full disk), never a reason to take the snapshot for damaged.
            marker = f"\n---- vfio-lab: restored from snapshot {key} ----\n"
            write_file(cell_dir / "console.log", console + marker.encode())
            overlay = scratch / "overlay.qcow2"
            rootfs.create_overlay(entry / snapshot.DISK, overlay)
            cfg = self._config(cell, prepared, overlay, scratch, cell_dir, console_append=True)
            argv = self._argv(cfg, cell_dir, incoming_fd=state.fileno())
            fds = (state.fileno(),)
            with contextlib.ExitStack() as stack:
                self._booting(cell, cfg, prepared, how=f"restoring snapshot {key}")
                boot_timeout = cell.scenario.machine.boot_timeout
                try:
                    # QEMU may die of a bad state before its monitor is up: a failed load.
                    guest = stack.enter_context(
                        self._guest(cfg, argv, prepared, cell_dir, kept=None, pass_fds=fds)
                    )
                except LaunchError as e:
                    raise snapshot.SnapshotFailed("restore", snapshot.qemu_words(e)) from e
                m = guest.machine
                loaded = snapshot.wait_restored(m, boot_timeout)
                try:  # a state that loads but gives no working guest is no snapshot either
                    seconds = guest.wait_ready(boot_timeout)
                    resumed = time.monotonic()
                    replayed = resume(guest.ssh)
                except InfraError as e:
                    raise snapshot.SnapshotFailed("restore", str(e).splitlines()[0]) from e
                phases = {
                    "qemu_start": m.qmp_up - m.started,
                    "restore": loaded - (m.qmp_up - m.started),
                    "ssh": seconds - loaded,
                    "resume": time.monotonic() - resumed,
                }
                self.progress(
                    cell.name,
                    f"SSH up after {seconds:.1f} s (restored"
                    + (f"; rewrote the config space of {' '.join(replayed)})" if replayed else ")"),
                )
                rounded = {k: round(v, 2) for k, v in phases.items()}
                yield ReadyGuest(guest, bound, f"restored {key}", rounded)


SAVE_TIMEOUT_S = 120.0
# Each snapshot holds the guest's used RAM (about 200 MiB for the stock kernel): the most
# recently used are kept, the rest (but those a running lab holds) removed when a new one
# is made. More than the built-in nightly's 13 machines, which would otherwise push each
# other out in turn.
SNAPSHOTS_KEPT = 24


def _snapshot_made_by(cell: Cell, prepared: Prepared) -> str:
    return f"test-ready snapshot of {cell.name}'s machine ({prepared.kernel.identity})"


def resume(ssh: GuestSSH) -> list[str]:
    """A restored guest's clock set to now and its entropy pool reseeded (every restore of
    a snapshot starts with the same clock and pool), and the config space of devices QEMU
    does not migrate written back; returns those devices."""
    seed = secrets.token_bytes(64).hex()
    now = str(time.time_ns())
    argv = ["python3", f"{GUEST_RUNTIME}/lab_guest.py", "snapshot-resume", now, seed]
    return ssh.check(argv).split()


@dataclass
class ReadyGuest:
    guest: Guest
    bound: list[str]  # the devices' BDFs, now on vfio-pci
    snapshot: str = ""  # how the guest came to be: "restored KEY", "none: why"
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase of its start


def _check_model(cell: Cell, kernel: KernelArtifact) -> None:
    """Refused before anything boots: an IOMMU model whose driver the kernel lacks (a
    prebuilt kernel; a source-built one has the model's options merged in and verified)."""
    config = parse_config(kernel.config.read_text()) if kernel.config.exists() else {}
    lacking = [
        f"CONFIG_{name}" for name, _ in IOMMU_MODELS[cell.iommu].kconfig
        if config and config.get(f"CONFIG_{name}", "n") not in ("y", "m")
    ]  # fmt: skip
    if lacking:
        raise cell.scenario.error(
            "machine.iommu",
            f"{cell.iommu} needs {', '.join(lacking)}, which {kernel.identity} does not have; "
            f"leave the model out for that kernel ({cell.kernel_field}.iommu)",
        )


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 for the SSH forward."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
