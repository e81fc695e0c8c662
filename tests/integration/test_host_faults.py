"""Host faults for real: results on a tmpfs that is full, read-only, or fills up mid-run.
Each is exit 3 with the path and the errno in one line, no traceback, no QEMU left, and
every cache entry as whole as before (by the cache's own manifests).

The first two fail before anything boots; the third restores a real snapshot into a cell
directory with no room for it. Mounting a tmpfs needs root, which CI has.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.core.cache import KINDS, Cache, damage
from lab.vm import snapshot
from tests.conftest import lab
from tests.integration.conftest import lab_qemus, summary

ONE_TEST = ["-k", "vfio_container_test and vfio_type1v2_iommu"]
PAGE = os.sysconf("SC_PAGE_SIZE")

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)"
)

Mount = Callable[..., Path]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """mount(name, *options): a tmpfs of its own under tmp_path, unmounted after."""
    mounted: list[Path] = []

    def mount(name: str, *options: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        opts = ["-o", ",".join(options)] if options else []
        subprocess.run(["mount", "-t", "tmpfs", *opts, "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], check=True)


def fill(path: Path) -> None:
    """Write into `path` until its filesystem has no byte left."""
    with (path / "filler").open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * PAGE)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    assert os.statvfs(path).f_bavail == 0


def cache_entries() -> dict[str, bool]:
    """Every entry of the cache, by kind/key: whole by its own manifest or not (looked at
    only: Cache.complete would mark it in use by the test)."""
    root = Cache().root
    return {
        f"{kind}/{entry.name}": damage(entry) is None
        for kind in KINDS
        if (root / kind).is_dir()
        for entry in sorted((root / kind).iterdir())
        if entry.is_dir() and not entry.name.startswith(".")
    }


@contextlib.contextmanager
def nothing_lost() -> Iterator[None]:
    """No QEMU outlives the block, and every whole cache entry stays whole."""
    qemus, before = lab_qemus(), cache_entries()
    yield
    assert lab_qemus() - qemus == set(), "a QEMU process outlived its run"
    after = cache_entries()
    lost = [name for name, whole in before.items() if whole and not after.get(name)]
    assert lost == [], f"cache entries condemned by a fault elsewhere: {lost}"


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The run's answer: one line, no traceback."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@needs_root
def test_a_full_results_disk_is_exit_3_naming_the_file_before_any_boot(tmpfs: Mount) -> None:
    disk = tmpfs("full", f"size={16 * PAGE}")
    fill(disk)
    with nothing_lost():
        done = lab("run", "quick", *ONE_TEST, "--results", str(disk / "results"))
    assert done.returncode == 3, done.stdout + done.stderr
    line = error_line(done)
    assert re.fullmatch(
        rf"vfio-lab: error: {disk}/results/[^ ]+: \[Errno 28\] No space left on device", line
    ), line


@needs_root
def test_a_read_only_results_disk_is_exit_3_naming_the_directory(tmpfs: Mount) -> None:
    disk = tmpfs("ro", "ro")
    with nothing_lost():
        done = lab("run", "quick", *ONE_TEST, "--results", str(disk / "results"))
    assert done.returncode == 3, done.stdout + done.stderr
    line = error_line(done)
    assert re.fullmatch(
        rf"vfio-lab: error: {disk}/results[^ ]*: \[Errno 30\] Read-only file system", line
    ), line


@needs_root
@pytest.mark.vm
def test_a_results_disk_full_at_the_restore_keeps_the_snapshot(results, tmpfs: Mount) -> None:
    warm = lab("run", "quick", *ONE_TEST, "--results", str(results))
    assert warm.returncode == 0, warm.stdout + warm.stderr
    (cell,) = summary(results)["cells"]
    match = re.fullmatch(r"(saved|restored) ([0-9a-f]{16})", cell["snapshot"] or "")
    assert match, f"the warm run made or used no snapshot: {cell['snapshot']}"
    entry = Cache().entry("snapshots", match.group(2))
    state = (entry / snapshot.STATE).stat()
    # Room for the run's small files (scenario, summary, provenance: a page each), none
    # for the boot's console the restore copies into the cell directory.
    pages = 6
    console = (entry / snapshot.CONSOLE).stat().st_size
    assert console > pages * PAGE, f"the saved console ({console} bytes) would fit"
    disk = tmpfs("small", f"size={pages * PAGE}")
    with nothing_lost():
        done = lab("run", "quick", *ONE_TEST, "--results", str(disk))
    said = done.stdout + done.stderr
    assert done.returncode == 3, said
    assert "Traceback" not in said, said
    assert re.search(rf"{disk}/[^ ]+/console\.log: \[Errno 28\] No space left on device", said)
    assert "did not restore" not in said and "damaged" not in said, said
    assert damage(entry) is None
    now = (entry / snapshot.STATE).stat()
    assert (now.st_ino, now.st_mtime_ns) == (state.st_ino, state.st_mtime_ns), "remade"
