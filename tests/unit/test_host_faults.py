"""Host faults (a full disk, a read-only or missing directory) with fakes at the seams: each
is an infrastructure error naming the path the lab was writing and the errno, never a
crash, and never a reason to condemn a cache entry whose copy could not be written.

A full disk is /dev/full behind a symlink where the lab writes a file by name, or a
sendfile that fails for one destination only where the lab copies."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
from pathlib import Path

import pytest

from lab.cli import main
from lab.cli import run as run_cli
from lab.core import files
from lab.core.cache import MANIFEST, Cache
from lab.core.errors import InfraError
from lab.model import scenario, shards
from lab.results import history
from lab.run.booter import CellBooter, ReadyGuest, _Boot
from lab.run.matrix import RunOptions, ScenarioRun
from lab.run.payload import TapStream
from lab.vm import snapshot
from lab.vm.accel import GuestCpu
from tests.unit.test_cache import Messages, rootfs_builder
from tests.unit.test_snapshot import QUICK, cell, prepared

ENOSPC = "[Errno 28] No space left on device"
KEY = "0123456789abcdef"
CONSOLE = b"[    0.000000] Linux version 6.1\n" * 100


def full(path: Path) -> Path:
    """`path` made a file that is always full."""
    path.symlink_to("/dev/full")
    return path


def saved_snapshot(cache: Cache) -> Path:
    with cache.build("snapshots", KEY, "test") as entry:
        meta = {"bound": ["0000:00:03.0"], "cpu": GuestCpu("tcg").as_json()}
        (entry / snapshot.META).write_text(json.dumps(meta))
        (entry / snapshot.CONSOLE).write_bytes(CONSOLE)
        (entry / snapshot.STATE).write_bytes(b"s" * 4096)
        (entry / snapshot.DISK).write_bytes(b"d" * 4096)
    return cache.entry("snapshots", KEY)


def fingerprint(entry: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file of an entry: inode, mtime and contents (a rebuild changes them)."""
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(entry.iterdir())
        if p.name != snapshot.META  # a restore touches it on purpose
    }


def test_a_full_cell_directory_is_blamed_for_the_restored_console_not_the_snapshot(
    tmp_path: Path,
) -> None:
    cache = Cache(tmp_path / "cache")
    entry = saved_snapshot(cache)
    before = fingerprint(entry)
    cell_dir = tmp_path / "cell"
    cell_dir.mkdir()
    console = full(cell_dir / "console.log")
    said = Messages()
    booter = CellBooter(cache, said)  # type: ignore[arg-type]
    with contextlib.ExitStack() as stack, pytest.raises(InfraError) as e:
        booter._attempt(_Boot(cell(), prepared(tmp_path), cell_dir, stack, key=KEY))
    assert str(e.value) == f"{console}: {ENOSPC}"
    assert e.value.exit_code == 3
    assert cache.complete("snapshots", KEY, "test"), (
        "the snapshot was condemned for a full cell dir"
    )
    assert fingerprint(entry) == before
    assert not any("damaged" in m or "did not restore" in m for _, m in said.lines)


def test_a_snapshot_failing_its_manifest_is_named_with_why_before_it_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = Cache(tmp_path / "cache")
    entry = saved_snapshot(cache)
    (entry / snapshot.STATE).write_bytes(b"s" * 100)  # a truncated save
    said = Messages()
    booter = CellBooter(cache, said)  # type: ignore[arg-type]

    def saved(b: _Boot) -> None:
        said("saving", "a new snapshot")
        b.guest = "ready"  # type: ignore[assignment]

    monkeypatch.setattr(booter, "_save_steps", lambda: (saved,))
    with contextlib.ExitStack() as stack:
        ready = booter._attempt(_Boot(cell(), prepared(tmp_path), tmp_path, stack, key=KEY))
    assert isinstance(ready, ReadyGuest) and ready.guest == "ready"
    assert said.lines == [
        ("cache", f"cache entry snapshots/{KEY} is damaged (state: 100 bytes, expected 4096); "
         "rebuilding"),
        ("saving", "a new snapshot"),
    ]  # fmt: skip


class FakeGuest:
    """What saving a snapshot asks of a guest: SSH that answers, QMP that says yes."""

    def __init__(self, disk: Path) -> None:
        self.disk = disk
        self.boot_to_ssh_s = 1.0
        self.ssh = self
        self.machine = self

    def check(self, argv: list[str]) -> str:
        return ""

    def close(self) -> None:
        pass

    def connect(self) -> None:
        pass

    def query(self, command: str, **args: object) -> object:
        return {}


def test_a_full_cache_disk_fails_the_save_blaming_the_entry_not_the_guests_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = Cache(tmp_path / "cache")
    guest_disk = tmp_path / "overlay.qcow2"
    guest_disk.write_bytes(b"d" * 8192)
    cell_dir = tmp_path / "cell"
    cell_dir.mkdir()
    (cell_dir / "console.log").write_bytes(CONSOLE)
    booter = CellBooter(cache, Messages())  # type: ignore[arg-type]

    def cold(b: _Boot) -> None:
        b.guest = FakeGuest(guest_disk)  # type: ignore[assignment]

    real_sendfile = os.sendfile

    def sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        if os.readlink(f"/proc/self/fd/{out_fd}").endswith(snapshot.DISK):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_sendfile(out_fd, in_fd, offset, count)

    monkeypatch.setattr(booter, "_cold_steps", lambda: (cold,))
    monkeypatch.setattr(snapshot, "save", lambda m, state, timeout: state.write_bytes(b"s"))
    monkeypatch.setattr(os, "sendfile", sendfile)
    with contextlib.ExitStack() as stack:
        failed = booter._attempt(_Boot(cell(), prepared(tmp_path), cell_dir, stack, key=KEY))
    assert isinstance(failed, snapshot.SnapshotFailed)
    assert failed.action == "save" and not failed.permanent, "a full disk may be gone next time"
    assert failed.reason.endswith(f"/{snapshot.DISK}: {ENOSPC}"), failed.reason
    assert str(cache.root / "snapshots") in failed.reason
    assert guest_disk.read_bytes() == b"d" * 8192
    assert not cache.entry("snapshots", KEY).exists()
    assert list((cache.root / "snapshots").iterdir()) == [], "the half-made entry stays"


def test_a_manifest_that_cannot_be_written_fails_the_build_and_keeps_the_old_entry(
    tmp_path: Path,
) -> None:
    cache = Cache(tmp_path)
    old = cache.ensure("rootfs", KEY, rootfs_builder(), Messages(), made_by="test")
    with pytest.raises(InfraError) as e, cache.build("rootfs", KEY, "test") as scratch:
        rootfs_builder()(scratch)
        manifest = full(scratch / MANIFEST)
    assert str(e.value) == f"{manifest}: {ENOSPC}"
    assert cache.complete("rootfs", KEY, "test") and old == cache.entry("rootfs", KEY)
    assert [p.name for p in (tmp_path / "rootfs").iterdir()] == [KEY]


def test_write_atomic_on_a_full_disk_names_the_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def mkstemp(prefix: str, suffix: str, dir: Path) -> tuple[int, str]:
        tmp = Path(dir) / f"{prefix}x{suffix}"
        tmp.touch()
        return os.open("/dev/full", os.O_WRONLY), str(tmp)

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)
    summary = tmp_path / "summary.json"
    with pytest.raises(InfraError) as e:
        files.write_atomic(summary, "{}\n" * 10000)
    assert str(e.value) == f"{summary}: {ENOSPC}"
    assert list(tmp_path.iterdir()) == []


def test_a_tap_stream_into_a_full_disk_is_an_infra_error_naming_it(tmp_path: Path) -> None:
    tap = full(tmp_path / "results.tap")
    with pytest.raises(InfraError) as e:
        TapStream(tap)("ok 1 - test_x\n")
    assert str(e.value) == f"{tap}: {ENOSPC}"


def test_a_run_into_a_results_root_that_cannot_be_made_names_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory\n")
    root = tmp_path / "file" / "results"
    s = scenario.load(QUICK)
    run = ScenarioRun(s, RunOptions(results_root=root), Cache(tmp_path))
    with pytest.raises(InfraError) as e:
        run.start(shards.plan(scenario.expand(s)))
    assert str(e.value).startswith(f"{root}/")
    assert str(e.value).endswith(": [Errno 20] Not a directory")


def test_an_unwrapped_full_disk_is_exit_3_in_one_line_blaming_the_destination(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def copy_into_full_results(args: object) -> int:
        # As shutil.copyfile raises it: the source first, the destination second.
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/cache/kernels/k", None, "/r/x")

    monkeypatch.setattr(run_cli, "cmd_list", copy_into_full_results)
    assert main(["list"]) == 3
    assert capsys.readouterr().err == f"vfio-lab: error: /r/x: {ENOSPC}\n"


def test_an_oserror_that_is_no_host_fault_is_still_a_crash(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def bug(args: object) -> int:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/a/typo")

    monkeypatch.setattr(run_cli, "cmd_list", bug)
    assert main(["list"]) == 4
    err = capsys.readouterr().err
    assert "Traceback" in err and "this is a bug in vfio-lab" in err


def test_a_history_on_a_full_disk_is_an_infra_error_not_a_bad_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FullConnection(sqlite3.Connection):
        def executescript(self, script: str) -> sqlite3.Cursor:
            e = sqlite3.OperationalError("database or disk is full")
            e.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[misc]
            raise e

    real = sqlite3.connect
    monkeypatch.setattr(
        sqlite3, "connect", lambda db: real(db, factory=FullConnection)
    )  # fmt: skip
    db = tmp_path / "history.db"
    with pytest.raises(InfraError) as e, history.opened(db, create=True):
        pass
    assert str(e.value) == f"{db}: [Errno 28] database or disk is full"
    assert e.value.exit_code == 3, "a full disk is not a bad history file (exit 2)"
