"""Booting one cell's guest, the one path `run`, `shell` and `repro` share.

Artifacts (keys, root filesystem, kernel) are prepared once per booter, and the
accelerator is chosen once. A guest starts (`CellBooter.ready`) as one flat sequence of
steps, each a small method: a cold boot (scratch directory, configure, overlay, launch,
wait for SSH, set up), the same saved as the machine's snapshot on the way, or a restore
of that snapshot (read it, scratch directory, its console, configure, overlay, load, wait
for the resumed guest). Each step pushes the undoing of what it set up onto the boot's
one stack, which unwinds in reverse when the guest stops or a step fails. Every guest
runs on its own overlay in its scratch directory, unless the caller brings or keeps one.
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
from typing import BinaryIO

from lab.artifacts import rootfs
from lab.artifacts.kbuild import UnknownOption
from lab.artifacts.kconfig import parse_config
from lab.artifacts.kernels import KERNEL_BUILDERS, KernelArtifact
from lab.artifacts.keys import LabKeys, ensure_keys
from lab.artifacts.qemu import QemuBinary, provide_qemu
from lab.artifacts.selftests import SelftestBuild, payload_programs, provide_selftests
from lab.core import cachegc
from lab.core.cache import Cache, content_key, process_start, tree_digest
from lab.core.errors import HostIOError, InfraError, LaunchError, UsageError
from lab.core.files import copy_file, make_dir, move, write_file
from lab.core.proc import stop_running
from lab.core.progress import SILENT, Progress
from lab.model.arches import ARCHES
from lab.model.kernelspec import SpecError
from lab.model.scenario import Cell, DeviceSpec
from lab.model.suites import SUITES
from lab.model.variants import DEVICES, IOMMU_MODELS, Accel, DeviceConfig
from lab.run.firstboot import StockKernelBoot
from lab.run.payload import GUEST_RUNTIME, RUNTIME_DIR, bind_devices, install_runtime
from lab.vm import accel as accel_mod
from lab.vm import bootclock, inventory, snapshot
from lab.vm.guest import Guest
from lab.vm.machine import Machine
from lab.vm.qemu import VMConfig, build_argv
from lab.vm.ssh import GuestSSH, free_port


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
    sockets: Path,
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
        qmp_socket=sockets / "qmp.sock",
        ssh_port=ssh_port,
        memory_mib=m.memory >> 20,
        cpus=m.cpus,
        iommu=cell.iommu,
        devices=device_configs(cell),
        hugepages=tuple(sorted(m.hugepages.items())),
        extra_cmdline=tuple(m.cmdline),
        qemu=qemu,
        arch=cell.arch,
        user_qmp_socket=sockets / "qmp-user.sock",
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
            *ARCHES[cell.arch].key(),
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


@dataclass
class _Boot:
    """One start of a guest, as its steps see it: what the caller asked for, `undo`, the
    stack each step pushes the undoing of what it set up onto, and what the steps made."""

    cell: Cell
    prepared: Prepared
    cell_dir: Path
    undo: contextlib.ExitStack[bool | None]
    bind: bool = True
    disk: Path | None = None  # the caller's overlay, booted instead of a fresh one
    keep_disk: Path | None = None  # where the fresh overlay goes when the guest stops
    gdb_port: int | None = None
    key: str = ""  # the machine's snapshot, when it may have one
    # What the steps made: left out of `init`, so that `fresh` starts without any.
    snapshot: str = field(init=False, default="")  # as in ReadyGuest
    state: BinaryIO | None = field(init=False, default=None)  # the snapshot's, restoring
    console: bytes = field(init=False, default=b"")  # the snapshot's boot, restoring
    bound: list[str] = field(init=False, default_factory=list)
    phases: dict[str, float] = field(init=False, default_factory=dict)
    scratch: Path = field(init=False)
    sockets: Path = field(init=False)  # short, for QEMU's UNIX sockets
    cfg: VMConfig = field(init=False)
    argv: list[str] = field(init=False)
    guest: Guest = field(init=False)

    @property
    def restoring(self) -> bool:
        return self.state is not None

    def fresh(self, undo: contextlib.ExitStack[bool | None]) -> _Boot:
        """The same request, nothing made yet, undone by `undo`."""
        return dataclasses.replace(self, undo=undo)


Step = Callable[[_Boot], None]


def _keep(overlay: Path, kept: Path) -> None:
    if overlay.exists():
        make_dir(kept.parent)
        move(overlay, kept)


class CellBooter:
    def __init__(
        self,
        cache: Cache,
        progress: Progress = SILENT,
        accel: str | None = None,
        on_accel: Callable[[str, accel_mod.AccelChoice], None] | None = None,
        snapshots: bool = True,
    ) -> None:
        self.cache = cache
        self.progress = progress
        self.snapshots = snapshots
        self.accel_override = accel
        self.on_accel = on_accel
        self._accel: dict[str, accel_mod.AccelChoice] = {}  # by arch
        self._keys: LabKeys | None = None
        self._images: dict[str, rootfs.RootfsImage] = {}  # by arch
        self._qemu: dict[tuple[str, str], QemuBinary] = {}  # by choice and arch
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
        arch = ARCHES[cell.arch]
        with self._lock:
            if self._keys is None:
                self._keys = ensure_keys(self.cache)
            keys = self._keys
            if arch.name not in self._images:
                first_boot = StockKernelBoot(self.cache, self.progress, self.stopping)
                self._images[arch.name] = rootfs.ensure_rootfs(
                    self.cache, keys, arch, first_boot, self.progress
                )
            image = self._images[arch.name]
        source = KERNEL_BUILDERS[cell.kernel.source]
        try:
            kernel = source.prepare(cell.kernel, arch, self.cache, self.progress, cell.config)
        except UnknownOption as e:
            raise cell.scenario.error(f"config.{e.option}", str(e)) from None
        except SpecError as e:
            raise cell.scenario.error(cell.kernel_field, str(e)) from None
        _check_model(cell, kernel)
        with self._lock:
            qemu = self._provide_qemu(cell.scenario.machine.qemu, arch.name)
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
            arch = ARCHES[cell.arch]
            tree = KERNEL_BUILDERS[cell.kernel.source].source_tree(
                cell.kernel, arch, self.cache, self.progress
            )
            out |= {
                s.name: provide_selftests(s, tree, arch, self.cache, self.progress) for s in built
            }
        return out

    def _provide_qemu(self, choice: str, arch: str) -> QemuBinary:
        """Once per booter and arch: the lab's QEMU may need building (and a build uses
        every core)."""
        if (choice, arch) not in self._qemu:
            self._qemu[choice, arch] = provide_qemu(choice, ARCHES[arch], self.cache, self.progress)
        return self._qemu[choice, arch]

    def _choose_accel(self, cell: Cell, kernel: KernelArtifact, qemu: QemuBinary) -> Accel:
        """Once per arch: KVM runs only the host's own."""
        if cell.arch not in self._accel:
            requested = self.accel_override or cell.scenario.accel
            choice = accel_mod.choose(
                requested,
                ARCHES[cell.arch],
                qemu.binary,
                kernel.vmlinuz,
                kernel.vmlinuz_sha256,
                self.cache,
            )
            self._accel[cell.arch] = choice
            self.progress("accel", f"{cell.arch}: {choice.accel}: {choice.reason}")
            if self.on_accel is not None:
                self.on_accel(cell.arch, choice)
        return self._accel[cell.arch].accel

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
        watches the boot with gdb, or turned snapshots off. `disk` boots an existing
        overlay; `keep_disk` is where the fresh one goes when the guest stops.

        Everything the boot sets up is undone by one stack, in reverse order, when the
        block ends or a step fails, whatever the failure (see `_run`)."""
        with contextlib.ExitStack() as undo:
            b = _Boot(cell, prepared, cell_dir, undo, bind, disk, keep_disk, gdb_port)
            yield self._start(b)

    def _start(self, b: _Boot) -> ReadyGuest:
        """The one choice of a boot: from the snapshot, or cold and why."""
        why_not = self._no_snapshot(b)
        if why_not is None:
            b.key = snapshot_key(b.cell, b.prepared, b.bind)
            why_not = self.cache.recall(["unsnapshotable", b.key])
        if why_not is None:
            return self._from_snapshot(b)
        return self._cold(b, why_not)

    def _no_snapshot(self, b: _Boot) -> str | None:
        if not self.snapshots:
            return "--no-snapshot"
        if b.disk is not None or b.keep_disk is not None:
            return "the guest's disk is kept"
        if b.gdb_port is not None:
            return "--gdb watches the boot"
        return None

    def _cold(self, b: _Boot, why: str) -> ReadyGuest:
        """A cold boot to test-ready; `why` there is no snapshot."""
        b.snapshot = f"none: {why}"
        return self._run(b, self._cold_steps())

    def _from_snapshot(self, b: _Boot) -> ReadyGuest:
        """The machine's snapshot restored; where there is none yet, a cold boot that is
        saved on the way and goes on (a restore would only cost the first run time). One
        that does not restore is made again, once; one that cannot be saved, booted around."""
        outcome = self._attempt(b)
        if isinstance(outcome, snapshot.SnapshotFailed) and outcome.action == "restore":
            self.progress(
                b.cell.name,
                f"snapshot {b.key} did not restore ({outcome.reason}); making it again",
            )
            outcome = self._attempt(b)
            if isinstance(outcome, snapshot.SnapshotFailed) and outcome.action == "restore":
                raise outcome
        if isinstance(outcome, ReadyGuest):
            return outcome
        # The save failed: this machine boots cold (from now on, if QEMU refuses it).
        if outcome.permanent:
            self.cache.remember(["unsnapshotable", b.key], outcome.reason)
        self.progress(b.cell.name, f"no snapshot of this machine: {outcome.reason}")
        return self._cold(b, outcome.reason)

    def _attempt(self, b: _Boot) -> ReadyGuest | snapshot.SnapshotFailed:
        """Restore the snapshot, or boot cold and save it, under the snapshot's lock, so
        that no other run takes one that did not restore before it is removed. The attempt
        has a stack of its own: undone before this returns when the snapshot failed (what
        comes next starts clean), handed on to the boot's `undo` when a guest came up."""
        with self.cache.lock(f"snapshot-{b.key}"), contextlib.ExitStack() as undo:
            made_by = _snapshot_made_by(b.cell, b.prepared)
            restoring = self.cache.intact("snapshots", b.key, self.progress, made_by)
            steps = self._restore_steps() if restoring else self._save_steps()
            try:
                ready = self._run(b.fresh(undo), steps)
            except snapshot.SnapshotFailed as e:
                undo.close()
                if e.action == "restore":
                    shutil.rmtree(self.cache.entry("snapshots", b.key), ignore_errors=True)
                return e
            b.undo.push(undo.pop_all())
            return ready

    # -- the steps, in the order each way of starting a guest runs them ----------------------
    def _cold_steps(self) -> tuple[Step, ...]:
        return (
            self._scratch,
            self._configure,
            self._overlay,
            self._launch,
            self._wait_for_ssh,
            self._set_up,
        )

    def _save_steps(self) -> tuple[Step, ...]:
        return (*self._cold_steps(), self._save)

    def _restore_steps(self) -> tuple[Step, ...]:
        return (
            self._read_snapshot,
            self._scratch,
            self._restored_console,
            self._configure,
            self._overlay,
            self._load,
            self._wait_resumed,
        )

    def _run(self, b: _Boot, steps: tuple[Step, ...]) -> ReadyGuest:
        """`steps` in order. Each pushes the undoing of what it set up onto `b.undo`, the one
        place cleanup happens: a step that fails leaves the steps before it to be undone in
        reverse, and none after it runs."""
        self._check_stopping()
        for step in steps:
            step(b)
        return ReadyGuest(b.guest, b.bound, b.snapshot, b.phases)

    def _scratch(self, b: _Boot) -> None:
        """A directory of the guest's own (its overlay, its QMP sockets), removed when the
        guest has stopped."""
        b.scratch = b.undo.enter_context(self.cache.scratch("vm-"))
        b.sockets = b.undo.enter_context(self.cache.scratch("vm-", sockets=True))

    def _configure(self, b: _Boot) -> None:
        """The machine, its command line written to the cell directory. A restored guest's
        console goes on after the snapshot's, and QEMU loads the state from its descriptor."""
        q, k, a = b.prepared.qemu.binary, b.prepared.kernel, b.prepared.accel
        disk = b.disk or b.scratch / "overlay.qcow2"
        b.cfg = vm_config(
            b.cell, k, q, a, disk, b.sockets, b.cell_dir, free_port(), b.gdb_port, b.restoring
        )
        b.argv = build_argv(b.cfg)
        if b.state is not None:
            b.argv = snapshot.restore_argv(b.argv, b.state.fileno())
        write_file(b.cell_dir / "qemu-argv.json", json.dumps(b.argv, indent=2) + "\n")

    def _overlay(self, b: _Boot) -> None:
        """A fresh overlay for the guest to write to, on the snapshot's disk when restoring,
        else on the root filesystem; none when the caller brought a disk. One the caller
        keeps is moved there once QEMU has let go of it."""
        if b.disk is not None:
            return
        base = b.prepared.image.base
        if b.restoring:
            base = self.cache.entry("snapshots", b.key) / snapshot.DISK
        rootfs.create_overlay(base, b.cfg.disk)
        if b.keep_disk is not None:
            b.undo.callback(_keep, b.cfg.disk, b.keep_disk)

    def _launch(self, b: _Boot) -> None:
        """QEMU started, announced to `vfio-lab qmp`/`console`, and tracked for stop_all."""
        cfg, keys = b.cfg, b.prepared.keys
        fds = () if b.state is None else (b.state.fileno(),)
        machine = Machine(b.argv, cfg.qmp_socket, b.cell_dir / "qemu.log", cfg.console_log, fds)
        ssh = GuestSSH(cfg.ssh_port, keys.client, keys.host_pub)
        kept = b.disk is not None or b.keep_disk is not None  # worth a `sync` before QEMU quits
        guest = Guest(cfg.name, machine, ssh, sync_on_exit=kept, disk=cfg.disk)
        b.undo.enter_context(machine)
        b.guest = b.undo.enter_context(guest)
        pid = machine.pid or -1
        record = inventory.RunningVM(
            id=cfg.qmp_socket.parent.name,
            name=cfg.name,
            pid=pid,
            ssh_port=cfg.ssh_port,
            qmp_socket=str(cfg.user_qmp_socket or ""),
            console_log=str(cfg.console_log),
            start=process_start(pid),
        )
        b.undo.enter_context(inventory.announced(self.cache.running, record))
        self.active.add(guest)
        b.undo.callback(self.active.discard, guest)

    def _wait_for_ssh(self, b: _Boot) -> None:
        """The guest booted until SSH answers, the console's lines timing each phase."""
        guest, m = b.guest, b.guest.machine
        with bootclock.watching(b.cfg.console_log) as marks:
            self._booting(b, "booting")
            boot = guest.wait_ready(
                b.cell.scenario.machine.boot_timeout,
                # A console the lab does not see (a `console=` of the scenario's own)
                # never shows the line: SSH is tried all the same, later.
                lambda: "sshd" in marks.seen or time.monotonic() - m.started > UNSEEN_SSHD_S,
            )
        b.phases = marks.phases(m.qmp_up, m.started, m.started + boot)
        self.progress(b.cell.name, f"SSH up after {boot:.1f} s")

    def _set_up(self, b: _Boot) -> None:
        """The lab's runtime, the cell's tests and its kernel's config copied in, and the
        devices bound to vfio-pci (unless the caller said not to)."""
        ssh, started = b.guest.ssh, time.monotonic()
        files = install_runtime(ssh, b.cell.scenario.payload_dir, b.prepared.kernel.config)
        self.progress(b.cell.name, f"copied {files} files from {b.cell.scenario.payload_dir}")
        b.bound = bind_devices(ssh, b.cell.scenario) if b.bind else []
        if b.bound:
            self.progress(b.cell.name, f"bound {' '.join(b.bound)} to vfio-pci")
        b.phases["setup"] = round(time.monotonic() - started, 2)

    def _save(self, b: _Boot) -> None:
        """The test-ready guest saved as the machine's snapshot, then let run on."""
        guest, started = b.guest, time.monotonic()
        try:
            with self.cache.build(
                "snapshots", b.key, _snapshot_made_by(b.cell, b.prepared)
            ) as entry:
                guest.ssh.check(["python3", f"{GUEST_RUNTIME}/lab_guest.py", "snapshot-save"])
                guest.ssh.close()
                snapshot.save(guest.machine, entry / snapshot.STATE, SAVE_TIMEOUT_S)
                # QEMU flushed and let go of the overlay when the migration completed: a
                # copy is the disk as the saved state knows it.
                copy_file(guest.disk, entry / snapshot.DISK)
                copy_file(b.cell_dir / "console.log", entry / snapshot.CONSOLE)
                meta = {
                    "bound": b.bound,
                    "boot_to_ssh_s": guest.boot_to_ssh_s,
                    "cpu": b.prepared.cpu.as_json(),
                }
                write_file(entry / snapshot.META, json.dumps(meta, indent=2) + "\n")
        except HostIOError as e:
            # A snapshot only saves time: one the host cannot hold (a full cache disk) is a
            # failed save, like a state QEMU could not write, and the cell goes on.
            raise snapshot.SnapshotFailed("save", str(e)) from e
        guest.machine.query("cont")
        guest.ssh.connect()
        seconds = time.monotonic() - started
        size = (self.cache.entry("snapshots", b.key) / snapshot.STATE).stat().st_size >> 20
        self.progress(b.cell.name, f"saved snapshot {b.key}: {size} MiB in {seconds:.1f} s")
        for old in cachegc.keep_newest(self.cache, "snapshots", SNAPSHOTS_KEPT):
            self.progress(b.cell.name, f"removed the least recently used snapshot {old.key}")
        b.snapshot = f"saved {b.key}"
        b.phases["snapshot_save"] = round(seconds, 2)

    def _read_snapshot(self, b: _Boot) -> None:
        """The snapshot's record, its boot's console, and its state opened for QEMU to load.
        One saved on another CPU is refused before QEMU starts: its guest may use a feature
        this CPU lacks, and fault mid-test."""
        entry = self.cache.entry("snapshots", b.key)
        try:  # another run may have just pruned it
            meta = json.loads((entry / snapshot.META).read_text())
            b.bound = list(meta["bound"])
            if why := b.prepared.cpu.unlike(accel_mod.GuestCpu.from_json(meta["cpu"])):
                raise snapshot.SnapshotFailed("restore", why)
            b.console = (entry / snapshot.CONSOLE).read_bytes()
            b.state = b.undo.enter_context((entry / snapshot.STATE).open("rb"))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise snapshot.SnapshotFailed("restore", f"its files: {e}") from e

    def _restored_console(self, b: _Boot) -> None:
        """The snapshot's boot, then a line saying so, begin the cell's console log. Written
        apart from the reads of `_read_snapshot`: a failure here is the cell directory's (a
        full disk), never a reason to take the snapshot for damaged."""
        marker = f"\n---- vfio-lab: restored from snapshot {b.key} ----\n"
        write_file(b.cell_dir / "console.log", b.console + marker.encode())

    def _load(self, b: _Boot) -> None:
        """QEMU started on the snapshot's state."""
        self._booting(b, f"restoring snapshot {b.key}")
        try:
            self._launch(b)
        except LaunchError as e:  # QEMU may die of a bad state before its monitor is up
            raise snapshot.SnapshotFailed("restore", snapshot.qemu_words(e)) from e

    def _wait_resumed(self, b: _Boot) -> None:
        """The state loaded, SSH answering, and the guest made current (see `resume`)."""
        guest, m = b.guest, b.guest.machine
        boot_timeout = b.cell.scenario.machine.boot_timeout
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
            b.cell.name,
            f"SSH up after {seconds:.1f} s (restored"
            + (f"; rewrote the config space of {' '.join(replayed)})" if replayed else ")"),
        )
        b.phases = {k: round(v, 2) for k, v in phases.items()}
        b.snapshot = f"restored {b.key}"

    def _booting(self, b: _Boot, how: str) -> None:
        cfg = b.cfg
        self.progress(
            b.cell.name, f"{how} ({b.prepared.accel}, {cfg.memory_mib} MiB, {cfg.cpus} vCPUs)"
        )


SAVE_TIMEOUT_S = 120.0
UNSEEN_SSHD_S = 20.0
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
