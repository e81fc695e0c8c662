"""The cache's integrity checks (manifests, ensure) and the sweep of orphaned scratch dirs.

No QEMU: entries are built by small Python functions in a tmp_path cache."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.artifacts.kernels import KernelArtifact
from lab.core.cache import (
    MANIFEST,
    OWNER,
    UNOWNED_GRACE_S,
    Cache,
    CorruptCacheFile,
    damage,
    process_start,
)
from lab.core.errors import HostIOError, InfraError
from lab.core.proc import die_with_lab
from lab.vm import inventory

REPO = Path(__file__).resolve().parents[2]
IMAGE = b"q" * 5678


class Messages:
    """A progress callback that remembers what it was told."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, label: str, message: str) -> None:
        self.lines.append((label, message))


class Builder:
    """A build function writing fixed files (and a directory), counting its calls."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.calls = 0

    def __call__(self, scratch: Path) -> None:
        self.calls += 1
        for name, data in self.files.items():
            (scratch / name).write_bytes(data)
        (scratch / "linux").mkdir()
        (scratch / "linux" / "Makefile").write_text("all:\n")


def rootfs_builder() -> Builder:
    return Builder({"base.qcow2": IMAGE, "build.log": b"log\n"})


# --- manifests and ensure --------------------------------------------------------------


def test_build_writes_a_manifest_of_the_top_level(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    with cache.build("rootfs", "k1", "test") as scratch:
        rootfs_builder()(scratch)
    manifest = json.loads((cache.entry("rootfs", "k1") / MANIFEST).read_text())
    assert manifest == {
        "files": {
            "base.qcow2": {"type": "file", "size": 5678},
            "build.log": {"type": "file", "size": 4},
            "linux": {"type": "dir"},  # not walked: a src entry is a whole kernel tree
        }
    }
    assert damage(cache.entry("rootfs", "k1")) is None


def test_a_missing_entry_is_built_without_a_damage_message(tmp_path: Path) -> None:
    cache, build, said = Cache(tmp_path), rootfs_builder(), Messages()
    entry = cache.ensure("rootfs", "k1", build, said, made_by="test")
    assert entry == cache.entry("rootfs", "k1")
    assert build.calls == 1
    assert (entry / "base.qcow2").read_bytes() == IMAGE
    assert said.lines == []


def test_a_valid_entry_is_not_rebuilt(tmp_path: Path) -> None:
    cache, said = Cache(tmp_path), Messages()
    cache.ensure("rootfs", "k1", rootfs_builder(), said, made_by="test")
    again = rootfs_builder()
    cache.ensure("rootfs", "k1", again, said, made_by="test")
    assert again.calls == 0
    assert said.lines == []


@pytest.mark.parametrize(
    ("kind", "name", "size", "files"),
    [
        ("rootfs", "base.qcow2", 1234, {"base.qcow2": IMAGE}),
        ("kernels", "artifact.json", 7, {"artifact.json": b'{"spec": "debian-stock"}\n'}),
    ],
)
def test_a_truncated_file_is_reported_and_rebuilt(
    tmp_path: Path, kind: str, name: str, size: int, files: dict[str, bytes]
) -> None:
    cache, said = Cache(tmp_path), Messages()
    entry = cache.ensure(kind, "k1", Builder(files), said, made_by="test")
    os.truncate(entry / name, size)
    rebuild = Builder(files)
    cache.ensure(kind, "k1", rebuild, said, made_by="test")
    expected = len(files[name])
    assert said.lines == [
        (
            "cache",
            f"cache entry {kind}/k1 is damaged ({name}: {size} bytes, expected {expected}); "
            "rebuilding",
        )
    ]
    assert rebuild.calls == 1
    assert (entry / name).read_bytes() == files[name]
    assert damage(entry) is None


def test_a_missing_file_is_reported_and_rebuilt(tmp_path: Path) -> None:
    cache, said = Cache(tmp_path), Messages()
    entry = cache.ensure("rootfs", "k1", rootfs_builder(), said, made_by="test")
    (entry / "base.qcow2").unlink()
    rebuild = rootfs_builder()
    cache.ensure("rootfs", "k1", rebuild, said, made_by="test")
    assert rebuild.calls == 1
    assert said.lines == [
        ("cache", "cache entry rootfs/k1 is damaged (base.qcow2: missing); rebuilding")
    ]


@pytest.mark.parametrize(
    ("manifest", "why"),
    [
        (None, f"{MANIFEST}: missing"),
        (b'{"files": {"base.qc', f"{MANIFEST}: unreadable"),
        (b'["files"]', f"{MANIFEST}: unreadable"),
        (b'{"files": {"base.qcow2": 5678}}', f"{MANIFEST}: unreadable"),
    ],
)
def test_a_missing_or_unreadable_manifest_rebuilds(
    tmp_path: Path, manifest: bytes | None, why: str
) -> None:
    cache, said = Cache(tmp_path), Messages()
    entry = cache.ensure("rootfs", "k1", rootfs_builder(), said, made_by="test")
    if manifest is None:
        (entry / MANIFEST).unlink()
    else:
        (entry / MANIFEST).write_bytes(manifest)
    rebuild = rootfs_builder()
    cache.ensure("rootfs", "k1", rebuild, said, made_by="test")
    assert rebuild.calls == 1
    [(label, message)] = said.lines
    assert label == "cache"
    assert message.startswith(f"cache entry rootfs/k1 is damaged ({why}")
    assert message.endswith("; rebuilding")
    assert damage(entry) is None  # the rebuild wrote a fresh manifest


def test_a_failed_rebuild_leaves_no_entry_to_trust(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = cache.ensure("rootfs", "k1", rootfs_builder(), Messages(), made_by="test")
    os.truncate(entry / "base.qcow2", 10)

    def broken(scratch: Path) -> None:
        (scratch / "base.qcow2").write_bytes(b"half")
        raise RuntimeError("debootstrap died")

    with pytest.raises(RuntimeError):
        cache.ensure("rootfs", "k1", broken, Messages(), made_by="test")
    assert not entry.exists()
    assert [p.name for p in entry.parent.iterdir()] == []  # no scratch or discarded copy
    again = rootfs_builder()
    cache.ensure("rootfs", "k1", again, Messages(), made_by="test")
    assert again.calls == 1


def test_build_replaces_an_existing_entry(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.ensure("rootfs", "k1", Builder({"base.qcow2": b"old"}), Messages(), made_by="test")
    with cache.build("rootfs", "k1", "test") as scratch:
        Builder({"base.qcow2": b"new!"})(scratch)
    entry = cache.entry("rootfs", "k1")
    assert (entry / "base.qcow2").read_bytes() == b"new!"
    assert damage(entry) is None
    assert [p.name for p in entry.parent.iterdir()] == ["k1"]


# --- artifact.json ---------------------------------------------------------------------


def artifact(entry: Path) -> KernelArtifact:
    return KernelArtifact(
        spec="debian-stock",
        release="6.1.0-1-amd64",
        identity="linux-image-6.1.0-1-amd64=6.1.4-1",
        vmlinuz=entry / "vmlinuz",
        initramfs=entry / "initramfs.cpio",
        vmlinuz_sha256="0" * 64,
    )


def test_a_sound_artifact_json_loads(tmp_path: Path) -> None:
    artifact(tmp_path).save(tmp_path / "artifact.json")
    loaded = KernelArtifact.load(tmp_path / "artifact.json")
    assert loaded == artifact(tmp_path)


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda text: text[: len(text) // 2], "Expecting"),  # truncated mid-document
        (lambda text: text.replace('"release"', '"rel"'), "no 'release' field"),
        (lambda text: "[]", "list indices"),
        (lambda text: "", "Expecting value"),
    ],
)
def test_a_corrupt_artifact_json_is_an_infra_error_naming_the_file(
    tmp_path: Path, mangle: Callable[[str], str], reason: str
) -> None:
    path = tmp_path / "artifact.json"
    artifact(tmp_path).save(path)
    path.write_text(mangle(path.read_text()))
    with pytest.raises(CorruptCacheFile) as caught:
        KernelArtifact.load(path)
    assert isinstance(caught.value, InfraError)
    assert caught.value.path == path
    assert str(path) in str(caught.value)
    assert reason in str(caught.value)


# --- scratch owners and sweep ----------------------------------------------------------


def test_process_start_is_field_22_of_proc_stat() -> None:
    # `cut` splits on single spaces; a python process's comm holds none.
    field = subprocess.run(
        ["cut", "-d", " ", "-f", "22", f"/proc/{os.getpid()}/stat"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert process_start(os.getpid()) == int(field)


def test_process_start_of_a_zombie_is_none() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while process_start(child.pid) is not None:  # exited but not reaped: a zombie
            assert time.monotonic() < deadline, "the child never became a zombie"
            time.sleep(0.01)
        assert Path(f"/proc/{child.pid}").exists()
    finally:
        child.wait()


def test_scratch_records_its_owner_and_is_removed(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    with cache.scratch("vm-") as path:
        owner = json.loads((path / OWNER).read_text())
        assert owner == {"pid": os.getpid(), "start": process_start(os.getpid())}
        assert path.parent == tmp_path / "tmp"
    assert not path.exists()


def dead_owner() -> dict[str, int | None]:
    """The pid and start time of a real process that has finished and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE)
    start = process_start(child.pid)
    child.communicate(b"\n")
    assert process_start(child.pid) is None
    return {"pid": child.pid, "start": start}


def owned_dir(cache: Cache, name: str, owner: dict[str, int | None]) -> Path:
    path = cache.tmp / name
    path.mkdir()
    (path / OWNER).write_text(json.dumps(owner))
    (path / "overlay.qcow2").write_bytes(b"x" * 100)
    return path


def test_sweep_removes_only_scratch_dirs_whose_owner_is_gone(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    me, my_start = os.getpid(), process_start(os.getpid())
    assert my_start is not None
    dead = owned_dir(cache, "vm-dead", dead_owner())
    # A live pid with another start time: the pid was reused after the owner died.
    reused = owned_dir(cache, "vm-reused", {"pid": me, "start": my_start - 1})
    unowned_old = cache.tmp / "vm-unowned-old"
    unowned_old.mkdir()
    old = time.time() - UNOWNED_GRACE_S - 5
    os.utime(unowned_old, (old, old))
    unowned_new = cache.tmp / "vm-unowned-new"
    unowned_new.mkdir()
    a_file = cache.tmp / "stray.log"
    a_file.write_text("not a directory\n")
    with cache.scratch("vm-") as mine:
        removed = cache.sweep()
        assert mine.is_dir()
    assert sorted(removed) == sorted([dead, reused, unowned_old])
    assert not dead.exists() and not reused.exists() and not unowned_old.exists()
    assert unowned_new.is_dir()
    assert a_file.is_file()


def scratch_of_a_killed_lab(cache_root: Path, sockets: bool) -> Path:
    """The real case: the owner dies by SIGKILL inside the block, so its finally never runs."""
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from lab.core.cache import Cache\n"
        "with Cache(Path(sys.argv[1])).scratch('vm-', sockets=sys.argv[2] == '1') as p:\n"
        "    print(p, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(cache_root), "1" if sockets else "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == -9, done.stderr
    left = Path(done.stdout.strip())
    assert left.is_dir()
    return left


def test_sweep_removes_the_scratch_of_a_killed_lab(tmp_path: Path) -> None:
    left = scratch_of_a_killed_lab(tmp_path, sockets=False)
    assert Cache(tmp_path).sweep() == [left]
    assert not left.exists()


def test_sockets_get_a_short_directory_of_their_own_however_deep_the_cache(
    tmp_path: Path,
) -> None:
    # sun_path holds 108 bytes: QEMU refused a socket under a CI runner's or a long home's cache.
    cache = Cache(tmp_path / ("d" * 60) / ("e" * 60) / "vfio-lab")
    with cache.scratch("vm-", sockets=True) as path:
        assert len(str(path / "qmp-user.sock").encode()) < 108
        assert path.parent == cache.sockets
        assert cache.sockets.stat().st_mode & 0o777 == 0o700
        assert json.loads((path / OWNER).read_text())["pid"] == os.getpid()
    assert not path.exists()
    assert not cache.sockets.exists(), "the short directory outlived the last guest"


def test_sweep_removes_the_sockets_of_a_killed_lab(tmp_path: Path) -> None:
    left = scratch_of_a_killed_lab(tmp_path, sockets=True)
    assert left.parent == Cache(tmp_path).sockets
    assert Cache(tmp_path).sweep() == [left]
    assert not left.parent.exists()


def test_a_sockets_directory_that_is_not_this_users_is_refused(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.sockets.write_text("planted in the shared /tmp\n")
    try:
        with (
            pytest.raises(HostIOError, match="not a directory of this user's"),
            cache.scratch("vm-", sockets=True),
        ):
            pass
    finally:
        cache.sockets.unlink()


def announce(cache: Cache, name: str, pid: int, start: int | None) -> Path:
    """An entry of running/ as a lab writes it while its guest runs, and as a killed lab
    leaves it."""
    vm = inventory.RunningVM(name, name, pid, 2222, "", "", start)
    cache.running.mkdir(parents=True, exist_ok=True)
    path = cache.running / f"{name}.json"
    path.write_text(json.dumps(dataclasses.asdict(vm)))
    return path


def test_sweep_removes_the_running_guests_whose_qemu_is_gone(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    me, my_start = os.getpid(), process_start(os.getpid())
    gone = dead_owner()
    dead = announce(cache, "dead", gone["pid"] or 0, gone["start"])
    # The pid is running, but it is another process's now: no guest is there.
    reused = announce(cache, "reused", me, (my_start or 0) - 1)
    live = announce(cache, "live", me, my_start)
    assert sorted(cache.sweep()) == sorted([dead, reused])
    assert [p.name for p in cache.running.iterdir()] == ["live.json"]
    assert [vm.name for vm in inventory.list_running(cache.running)] == ["live"]
    assert live.is_file()


def test_the_guest_of_a_killed_lab_dies_with_it_and_its_announcement_is_swept(
    tmp_path: Path,
) -> None:
    """A lab killed by SIGKILL runs no finally: its QEMU (a stand-in here) dies with it
    (die_with_lab), and its entry in running/ stays until the next lab's sweep."""
    script = (
        "import os, signal, subprocess, sys\n"
        "from pathlib import Path\n"
        "from lab.core.cache import Cache, process_start\n"
        "from lab.core.proc import die_with_lab\n"
        "from lab.vm import inventory\n"
        # Not on the test's pipes: a survivor fails the check below instead of holding
        # subprocess.run's pipes open for its 600 s.
        "qemu = subprocess.Popen([*die_with_lab(), 'sleep', '600'], stdout=subprocess.DEVNULL,"
        " stderr=subprocess.DEVNULL)\n"
        "vm = inventory.RunningVM('g', 'g', qemu.pid, 2222, '', '', process_start(qemu.pid))\n"
        "with inventory.announced(Cache(Path(sys.argv[1])).running, vm):\n"
        "    print(qemu.pid, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == -9, done.stderr
    qemu = int(done.stdout)
    deadline = time.monotonic() + 10
    while process_start(qemu) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_start(qemu) is None, "the guest outlived its lab"
    left = Cache(tmp_path).running / "g.json"
    assert left.is_file()
    assert Cache(tmp_path).sweep() == [left]
    assert not left.exists()


def test_a_command_whose_lab_died_before_its_death_signal_was_set_never_runs(
    tmp_path: Path,
) -> None:
    """The prefix's check, as a child sees it once its lab is gone: another parent."""
    argv = die_with_lab()
    ran = tmp_path / "ran"
    assert subprocess.run([*argv, "touch", ran]).returncode == 0 and ran.exists()
    ran.unlink()
    argv[argv.index(str(os.getpid()))] = "1"  # the lab this child was started by is gone
    assert subprocess.run([*argv, "touch", ran]).returncode != 0
    assert not ran.exists(), "the command ran after its lab had died"


def test_sweep_of_an_empty_cache_removes_nothing(tmp_path: Path) -> None:
    assert Cache(tmp_path).sweep() == []


def test_an_entry_from_before_manifests_is_adopted_not_rebuilt(tmp_path):
    cache = Cache(tmp_path)
    old = cache.entry("rootfs", "k")
    old.mkdir(parents=True)
    (old / "base.qcow2").write_bytes(b"q" * 10)
    said: list[str] = []
    built: list[Path] = []
    entry = cache.ensure(
        "rootfs",
        "k",
        built.append,
        lambda label, m: said.append(m),
        legacy="base.qcow2",
        made_by="test",
    )
    assert built == [] and entry == old
    assert said == ["cache entry rootfs/k predates manifests; adopting it"]
    (old / "base.qcow2").write_bytes(b"q")  # truncated after adoption: now it is caught
    cache.ensure(
        "rootfs",
        "k",
        lambda s: (s / "base.qcow2").write_bytes(b"new"),
        lambda *a: None,
        made_by="test",
    )
    assert (old / "base.qcow2").read_bytes() == b"new"


def test_a_half_built_entry_of_a_dead_lab_is_swept(tmp_path):
    cache = Cache(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-c", SCRIPT_BUILD.format(root=tmp_path)], stdout=subprocess.PIPE
    )
    assert child.stdout is not None and child.stdout.readline().strip() == b"building"
    child.kill()
    child.wait()
    (half,) = (tmp_path / "kernels").glob(".k-*")
    assert half in cache.sweep() and not half.exists()
    with cache.build("kernels", "mine", "test") as mine:  # a live build is never swept
        assert mine not in cache.sweep() and mine.exists()


SCRIPT_BUILD = """
import time
from pathlib import Path
from lab.core.cache import Cache
with Cache(Path("{root}")).build("kernels", "k", "test") as scratch:
    print("building", flush=True)
    time.sleep(60)
"""


def test_memo_computes_once_per_inputs(tmp_path: Path) -> None:
    cache, calls = Cache(tmp_path), []

    def compute() -> str:
        calls.append(1)
        return f"answer {len(calls)}"

    assert cache.memo(["apt", "linux-image-amd64", "lists@1"], compute) == "answer 1"
    assert cache.memo(["apt", "linux-image-amd64", "lists@1"], compute) == "answer 1"
    assert cache.memo(["apt", "linux-image-amd64", "lists@2"], compute) == "answer 2"
    assert len(calls) == 2
    assert cache.recall(["apt", "never asked"]) is None


def test_complete_is_false_for_a_missing_or_damaged_entry(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    assert not cache.complete("kernels", "k", "test")
    cache.ensure(
        "kernels", "k", lambda d: (d / "vmlinuz").write_bytes(IMAGE), Messages(), made_by="test"
    )
    assert cache.complete("kernels", "k", "test")
    (cache.entry("kernels", "k") / "vmlinuz").write_bytes(IMAGE[:10])
    assert not cache.complete("kernels", "k", "test")
