"""Cleanup of one boot, with fakes at the seams (QEMU, SSH, qemu-img, the guest's setup): a
failure at any step of `CellBooter.ready`, or in the caller's block, undoes what the steps
before it set up, each thing once and in the reverse order, and starts nothing after it;
a snapshot that does not restore or save is undone before the next attempt starts."""

from __future__ import annotations

import contextlib
import gc
import os
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from lab.artifacts import rootfs
from lab.core.cache import Cache
from lab.core.errors import BuildError, GuestCommandError, HostIOError, LaunchError
from lab.run import booter as booter_mod
from lab.run.booter import CellBooter, ReadyGuest
from lab.vm import inventory, snapshot
from tests.unit.test_cache import Messages
from tests.unit.test_snapshot import cell, prepared


@pytest.fixture(autouse=True)
def nothing_left_to_the_garbage_collector() -> Iterator[None]:
    """A file a step opened and nothing closed (the snapshot's state) is closed by the
    garbage collector, with a ResourceWarning: the stack is to close it, in its turn."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []


class Interrupted(BaseException):
    """Ctrl-C in the caller's block (a KeyboardInterrupt pytest would take for its own)."""


class Lab:
    """The seams of a boot, recording what is set up (+x), undone (-x) or done (x), in
    order; `fail` names the one that raises, once."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log: list[str] = []
        self.fail: str | None = None
        self.console = b"[    0.000000] Linux version 6.1\nvfio-lab: starting sshd\n"
        self.cache = Cache(tmp_path / "cache")
        self.said = Messages()
        self.cell_dir = tmp_path / "cell"
        self.cell_dir.mkdir()
        self.prepared = prepared(tmp_path)
        lab = self

        def failing(point: str) -> bool:
            if lab.fail == point:
                lab.fail = None
                return True
            return False

        self.failing = failing
        real_scratch = self.cache.scratch

        @contextlib.contextmanager
        def scratch(prefix: str, *, sockets: bool = False) -> Iterator[Path]:
            if sockets:  # made with the scratch directory; only the latter is logged
                with real_scratch(prefix, sockets=True) as path:
                    yield path
                return
            if failing("scratch"):
                raise HostIOError(self.cache.tmp, 28, "No space left on device")
            with real_scratch(prefix) as path:
                self.log.append("+scratch")
                try:
                    yield path
                finally:
                    self.log.append("-scratch")

        real_announced = inventory.announced

        @contextlib.contextmanager
        def announced(directory: Path, vm: inventory.RunningVM) -> Iterator[None]:
            if failing("announce"):
                raise HostIOError(directory, 28, "No space left on device")
            with real_announced(directory, vm):
                self.log.append("+announced")
                try:
                    yield
                finally:
                    self.log.append("-announced")

        def create_overlay(base: Path, overlay: Path) -> None:
            if failing("overlay"):
                raise BuildError("overlay", "qemu-img failed")
            overlay.write_bytes(b"overlay on " + bytes(base))
            self.log.append("overlay")

        def install_runtime(ssh: object, tests: Path, config: Path) -> int:
            if failing("copy"):
                raise GuestCommandError("rm -rf /opt/vfio-lab", 1, "")
            self.log.append("copy")
            return 3

        def bind_devices(ssh: object, scenario: object) -> list[str]:
            if failing("bind"):
                raise GuestCommandError("lab_guest.py bind", 1, "")
            self.log.append("bind")
            return ["0000:01:00.0"]

        def save(machine: FakeMachine, state: Path, timeout: float) -> None:
            if failing("save"):
                raise snapshot.SnapshotFailed("save", "migration failed")
            state.write_bytes(b"s" * 4096)
            self.log.append("save")

        def wait_restored(machine: FakeMachine, timeout: float) -> float:
            if failing("load"):
                raise snapshot.SnapshotFailed("restore", "load failed")
            self.log.append("load")
            return 0.2

        def machine(*args: Any) -> FakeMachine:
            return FakeMachine(lab, *args)

        def ssh(*args: Any) -> FakeSSH:
            return FakeSSH(lab)

        real_write = booter_mod.write_file

        def write_file(path: Path, text: str | bytes) -> None:
            if path.name == "console.log" and failing("console"):
                raise HostIOError(path, 28, "No space left on device")
            real_write(path, text)

        monkeypatch.setattr(self.cache, "scratch", scratch)
        monkeypatch.setattr(inventory, "announced", announced)
        monkeypatch.setattr(rootfs, "create_overlay", create_overlay)
        monkeypatch.setattr(booter_mod, "install_runtime", install_runtime)
        monkeypatch.setattr(booter_mod, "bind_devices", bind_devices)
        monkeypatch.setattr(booter_mod, "Machine", machine)
        monkeypatch.setattr(booter_mod, "GuestSSH", ssh)
        monkeypatch.setattr(booter_mod, "write_file", write_file)
        monkeypatch.setattr(snapshot, "save", save)
        monkeypatch.setattr(snapshot, "wait_restored", wait_restored)

    def booter(self, snapshots: bool = True) -> CellBooter:
        b = CellBooter(self.cache, self.said, snapshots=snapshots)  # type: ignore[arg-type]
        b.active = Tracked(self.log)
        return b

    def boot(self, booter: CellBooter, body_fails: bool = False, **options: Any) -> ReadyGuest:
        """One `ready` block; what it yielded."""
        with booter.ready(cell(), self.prepared, self.cell_dir, **options) as ready:
            self.log.append("body")
            if body_fails:
                raise Interrupted
        return ready


class Tracked(set[Any]):
    """CellBooter.active, recording what is added and discarded."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def add(self, guest: Any) -> None:
        self.log.append("+tracked")
        super().add(guest)

    def discard(self, guest: Any) -> None:
        if guest in self:
            self.log.append("-tracked")
        super().discard(guest)


class FakeMachine:
    """A QEMU that starts (and writes its console) unless told to fail; stopped once, as the
    real one, however often shutdown is called."""

    def __init__(
        self,
        lab: Lab,
        argv: Sequence[str],
        qmp_socket: Path,
        qemu_log: Path,
        console_log: Path,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.lab = lab
        self.console_log = console_log
        self.pass_fds = tuple(pass_fds)
        self.up = False
        self.pid = 4242
        self.started = self.qmp_up = 0.0
        self.abnormal: str | None = None

    def __enter__(self) -> FakeMachine:
        if self.lab.failing("launch"):
            raise LaunchError("QEMU exited before its QMP socket was up", 1, [], [])
        with self.console_log.open("ab") as f:
            f.write(self.lab.console)
        self.up = True
        self.started = self.qmp_up = time.monotonic()
        self.lab.log.append("+qemu")
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()

    def check_alive(self, message: str) -> None:
        if self.lab.failing("ssh"):
            raise LaunchError(message, 1, [], [])

    def query(self, command: str, **args: object) -> object:
        return {}

    def running(self) -> bool:
        return self.up

    def shutdown(self, timeout: float = 10.0) -> None:
        if self.up:
            self.up = False
            self.lab.log.append("-qemu")


class FakeSSH:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.client: object | None = None

    def connect(self, timeout: float = 5.0) -> None:
        self.client = object()

    def close(self) -> None:
        self.client = None

    def run(self, command: str, timeout: float = 0) -> Any:
        if command == "true":
            self.lab.log.append("ssh")
        return type("Result", (), {"status": 0})()

    def check(self, argv: list[str] | str) -> str:
        if "snapshot-resume" in argv:
            if self.lab.failing("resume"):
                raise GuestCommandError("snapshot-resume", 1, "")
            self.lab.log.append("resume")
        return ""


def undone_in_reverse(log: list[str]) -> list[str]:
    """What `log` left set up; raises if anything was undone out of order or twice."""
    held: list[str] = []
    for event in log:
        if event.startswith("+"):
            held.append(event[1:])
        elif event.startswith("-"):
            assert held and held[-1] == event[1:], f"{event} undone out of order: {log}"
            held.pop()
    return held


def open_files(directory: Path) -> list[str]:
    """This process's descriptors open on files under `directory`."""
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own descriptor, closed
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
    return [path for path in paths if path.startswith(str(directory))]


# What each step of a cold boot leaves in the log, in order; and how that is undone.
COLD = ["+scratch", "overlay", "+qemu", "+announced", "+tracked", "ssh", "copy", "bind"]
COLD_UNDO = ["-tracked", "-announced", "-qemu", "-scratch"]
UNDO = {
    "+scratch": "-scratch",
    "+qemu": "-qemu",
    "+announced": "-announced",
    "+tracked": "-tracked",
}
COLD_POINTS = ["scratch", "overlay", "launch", "announce", "ssh", "copy", "bind"]


def up_to(steps: list[str], failed_before: int) -> list[str]:
    """The steps before the one that failed, then their undoing in reverse."""
    done = steps[:failed_before]
    return done + [UNDO[e] for e in reversed(done) if e in UNDO]


def cold_up_to(point: str) -> list[str]:
    at = COLD_POINTS.index(point)
    return up_to(COLD, at if at < 4 else at + 1)  # "+tracked" cannot fail: it is no point


@pytest.mark.parametrize("point", COLD_POINTS)
def test_a_cold_boot_failing_at_any_step_undoes_the_steps_before_in_reverse(
    point: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = Lab(tmp_path, monkeypatch)
    booter = lab.booter(snapshots=False)
    lab.fail = point
    with pytest.raises(Exception):  # noqa: B017 - each point raises its own kind
        lab.boot(booter)
    assert lab.fail is None, f"{point} was never reached"
    assert lab.log == cold_up_to(point)
    assert undone_in_reverse(lab.log) == []
    assert not booter.active
    assert list(lab.cache.tmp.iterdir()) == []


def test_a_cold_boot_interrupted_in_the_callers_block_undoes_everything_in_reverse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = Lab(tmp_path, monkeypatch)
    with pytest.raises(Interrupted):
        lab.boot(lab.booter(snapshots=False), body_fails=True)
    assert lab.log == [*COLD, "body", *COLD_UNDO]
    assert list(lab.cache.tmp.iterdir()) == []


def test_a_kept_overlay_is_moved_out_after_qemu_stops_and_before_its_directory_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = Lab(tmp_path, monkeypatch)
    keep = tmp_path / "kept" / "overlay.qcow2"
    real_move = booter_mod.move

    def move(source: Path, destination: Path) -> None:
        lab.log.append("keep")
        real_move(source, destination)

    monkeypatch.setattr(booter_mod, "move", move)
    lab.fail = "ssh"
    with pytest.raises(LaunchError):
        lab.boot(lab.booter(), keep_disk=keep)
    assert lab.log == [*COLD[:5], "-tracked", "-announced", "-qemu", "keep", "-scratch"]
    assert keep.read_bytes().startswith(b"overlay on ")
    lab.log.clear()
    ready = lab.boot(lab.booter(), keep_disk=keep.with_name("again.qcow2"))
    assert ready.snapshot == "none: the guest's disk is kept"
    assert lab.log[-2:] == ["keep", "-scratch"]


def test_a_console_that_never_says_sshd_starts_is_tried_over_ssh_after_the_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scenario's own console= keeps lab-init's line off the serial log."""
    monkeypatch.setattr(booter_mod, "UNSEEN_SSHD_S", 0.3)
    lab = Lab(tmp_path, monkeypatch)
    lab.console = b"[    0.000000] Linux version 6.1\n"
    ready = lab.boot(lab.booter(snapshots=False))
    assert lab.log == [*COLD, "body", *COLD_UNDO]
    assert ready.guest.boot_to_ssh_s is not None and ready.guest.boot_to_ssh_s >= 0.3


def test_the_first_run_saves_the_snapshot_and_the_second_restores_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = Lab(tmp_path, monkeypatch)
    saved = lab.boot(lab.booter())
    assert saved.snapshot.startswith("saved ")
    assert lab.log == [*COLD, "save", "body", *COLD_UNDO]
    assert set(saved.phases) >= {"qemu_start", "ssh", "setup", "snapshot_save"}
    lab.log.clear()
    restored = lab.boot(lab.booter())
    assert restored.snapshot == "restored " + saved.snapshot[6:]
    assert restored.bound == ["0000:01:00.0"]
    assert list(restored.phases) == ["qemu_start", "restore", "ssh", "resume"]
    assert lab.log == [
        "+scratch", "overlay", "+qemu", "+announced", "+tracked", "load", "ssh", "resume",
        "body", *COLD_UNDO,
    ]  # fmt: skip
    assert open_files(lab.cache.root / "snapshots") == [], "the snapshot's state is still open"


RESTORE = ["+scratch", "overlay", "+qemu", "+announced", "+tracked", "load", "ssh", "resume"]
# Where a restore fails, and how many of its steps were done by then.
RESTORE_POINTS = {"launch": 2, "load": 5, "ssh": 6, "resume": 7}


@pytest.mark.parametrize("point", RESTORE_POINTS)
def test_a_restore_failing_at_any_step_is_undone_before_the_snapshot_is_made_again(
    point: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = Lab(tmp_path, monkeypatch)
    lab.boot(lab.booter())
    lab.log.clear()
    lab.fail = point
    ready = lab.boot(lab.booter())
    assert lab.fail is None, f"{point} was never reached"
    assert ready.snapshot.startswith("saved ")
    failed = up_to(RESTORE, RESTORE_POINTS[point])
    assert lab.log == [*failed, *COLD, "save", "body", *COLD_UNDO]
    assert undone_in_reverse(lab.log) == []
    assert open_files(lab.cache.root / "snapshots") == []


def test_a_restore_failing_on_the_host_is_undone_and_keeps_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An announcement the cache disk cannot hold is the host's fault, not the snapshot's."""
    lab = Lab(tmp_path, monkeypatch)
    lab.boot(lab.booter())
    lab.log.clear()
    lab.fail = "announce"
    with pytest.raises(HostIOError):
        lab.boot(lab.booter())
    assert lab.log == up_to(RESTORE, 3)
    assert open_files(lab.cache.root / "snapshots") == []
    assert saved_snapshots(lab.cache)


def test_a_restored_console_the_cell_directory_cannot_hold_undoes_the_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = Lab(tmp_path, monkeypatch)
    lab.boot(lab.booter())
    lab.log.clear()
    lab.fail = "console"
    with pytest.raises(HostIOError):
        lab.boot(lab.booter())
    assert lab.log == ["+scratch", "-scratch"]
    assert open_files(lab.cache.root / "snapshots") == [], "the snapshot's state is still open"
    assert saved_snapshots(lab.cache), "the snapshot was taken for damaged"


@pytest.mark.parametrize("permanent", [False, True])
def test_a_failed_save_is_undone_before_the_cold_boot_starts(
    permanent: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = Lab(tmp_path, monkeypatch)
    if permanent:
        monkeypatch.setattr(snapshot, "save", blocked)
    else:
        lab.fail = "save"
    ready = lab.boot(lab.booter())
    assert ready.snapshot == f"none: {'blocked' if permanent else 'migration failed'}"
    assert lab.log == [
        *COLD, *COLD_UNDO,
        *COLD, "body", *COLD_UNDO,
    ]  # fmt: skip
    assert not saved_snapshots(lab.cache)
    lab.log.clear()
    again = lab.boot(lab.booter())
    if permanent:  # QEMU refuses this machine every time: it is not asked again
        assert again.snapshot == "none: blocked" and lab.log == [*COLD, "body", *COLD_UNDO]
    else:  # a save that may work next time is tried again
        assert again.snapshot.startswith("saved ")


def blocked(machine: object, state: Path, timeout: float) -> None:
    raise snapshot.SnapshotFailed("save", "blocked", permanent=True)


@pytest.mark.parametrize("path", ["cold", "saved", "restored"])
def test_an_interrupt_in_the_callers_block_undoes_every_path_in_reverse(
    path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = Lab(tmp_path, monkeypatch)
    if path == "restored":
        lab.boot(lab.booter())
        lab.log.clear()
    booter = lab.booter(snapshots=path != "cold")
    with pytest.raises(Interrupted):
        lab.boot(booter, body_fails=True)
    assert lab.log[-5:] == ["body", *COLD_UNDO]
    assert undone_in_reverse(lab.log) == []
    assert not booter.active
    assert list(lab.cache.tmp.iterdir()) == []
    assert open_files(lab.cache.root / "snapshots") == []


def test_an_interrupt_during_the_save_undoes_the_guest_and_boots_nothing_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = Lab(tmp_path, monkeypatch)

    def interrupted(machine: object, state: Path, timeout: float) -> None:
        raise Interrupted

    monkeypatch.setattr(snapshot, "save", interrupted)
    with pytest.raises(Interrupted):
        lab.boot(lab.booter())
    assert lab.log == [*COLD, *COLD_UNDO]
    assert not saved_snapshots(lab.cache)


def saved_snapshots(cache: Cache) -> list[Path]:
    return list((cache.root / "snapshots").glob("[!.]*"))


def test_what_a_save_then_a_restore_say_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = Lab(tmp_path, monkeypatch)
    lab.boot(lab.booter())
    lab.boot(lab.booter())
    name, payload = cell().name, cell().scenario.payload_dir
    key = saved_snapshots(lab.cache)[0].name

    def numbers(text: str) -> str:
        return re.sub(r"\d+(\.\d+)?", "N", text)

    assert [(label, numbers(m)) for label, m in lab.said.lines] == [
        (name, numbers(text))
        for text in (
            "booting (tcg, 1 MiB, 1 vCPUs)",
            "SSH up after 1 s",
            f"copied 3 files from {payload}",
            "bound 0000:01:00.0 to vfio-pci",
            f"saved snapshot {key}: 1 MiB in 1 s",
            f"restoring snapshot {key} (tcg, 1 MiB, 1 vCPUs)",
            "SSH up after 1 s (restored)",
        )
    ]
