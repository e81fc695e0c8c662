"""The cache kept within a size: `vfio-lab cache list|du|prune|clean` and the ceiling after
a run, on real directories (small real files, times set with os.utime) and a real second
process holding an entry the way a running lab does."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lab.cli import main
from lab.cli.cache import keep_ceiling
from lab.core import cachegc
from lab.core.cache import KINDS, Cache, record_made_by, use_lock_path
from lab.core.cachegc import entries, measured
from lab.results.tap import parse_text
from lab.run.cell import CellRun, PayloadOutcome
from tests.conftest import REPO

KIB = 1 << 10
NOW = time.time()
DAY = 86400.0


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cache:
    """The cache `vfio-lab` itself uses in this test: its root is tmp_path/cache."""
    monkeypatch.setenv("VFIO_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(cachegc.CEILING_ENV, raising=False)
    return Cache()


def entry(cache: Cache, kind: str, key: str, kib: int, days_ago: float, what: str = "") -> Path:
    """An entry of `kib` KiB of real data, last used `days_ago` days ago, as a lab that
    used it then leaves it: its lock file's mtime set to that time."""
    path = cache.entry(kind, key)
    path.mkdir(parents=True)
    (path / "blob").write_bytes(b"x" * (kib * KIB))
    record_made_by(path, what or f"made for {key}")
    used = NOW - days_ago * DAY
    lock = use_lock_path(cache.root, kind, key)
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    for p in (lock, path):
        os.utime(p, (used, used))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def left(cache: Cache) -> list[str]:
    return sorted(e.name for e in entries(cache))


HOLD = """
import sys, time
from pathlib import Path
from lab.core.cache import Cache
cache = Cache(Path(sys.argv[1]))
cache.use(sys.argv[2], sys.argv[3])
print("holding", flush=True)
time.sleep(60)
"""


@pytest.fixture
def running_lab(cache: Cache):
    """A second process that marks an entry in use as a lab run does (Cache.use), and
    holds it until it is killed; the entry's last use left as it was."""
    procs: list[subprocess.Popen[bytes]] = []

    def hold(kind: str, key: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(cache.root), kind, key],
            cwd=REPO,
            stdout=subprocess.PIPE,
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"holding"
        # A lab marks an entry used when it takes it: set back, as by a run that has been
        # going for a while.
        lock = use_lock_path(cache.root, kind, key)
        os.utime(lock, (os.stat(cache.entry(kind, key)).st_mtime,) * 2)
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


# --- list and du -------------------------------------------------------------------------


def test_list_shows_each_entry_least_recently_used_first(capsys, cache: Cache) -> None:
    entry(cache, "kernels", "newkernel", 256, days_ago=1, what="kernel debian-stock:x=1")
    entry(cache, "rootfs", "oldrootfs", 512, days_ago=9, what="Debian bookworm root")
    entry(cache, "src", "midsrc", 128, days_ago=4)
    code, out, _ = run(capsys, "cache", "list")
    assert code == 0
    rows = [line.split() for line in out.splitlines()[1:-1]]
    assert [(r[0], r[1]) for r in rows] == [
        ("rootfs", "oldrootfs"),
        ("src", "midsrc"),
        ("kernels", "newkernel"),
    ]
    assert 512 * KIB <= cachegc.parse_size(rows[0][2]) < 540 * KIB  # and a few blocks
    assert out.splitlines()[3].endswith("kernel debian-stock:x=1")
    day = time.strftime("%Y-%m-%d", time.localtime(NOW - 9 * DAY))
    assert rows[0][3] == day
    assert out.splitlines()[-1].startswith("3 entries, ")


def test_du_sums_per_kind_and_counts_what_is_not_an_entry_apart(capsys, cache: Cache) -> None:
    entry(cache, "kernels", "a", 256, days_ago=1)
    entry(cache, "kernels", "b", 256, days_ago=2)
    (cache.root / "ccache").mkdir()
    (cache.root / "ccache" / "obj").write_bytes(b"c" * 1024 * KIB)
    code, out, _ = run(capsys, "cache", "du")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert set(KINDS) <= set(lines)
    assert lines["kernels"].split()[2:] == ["2", "entries"]
    kernels = cachegc.parse_size(lines["kernels"].split()[1])
    assert 512 * KIB <= kernels < 560 * KIB
    assert lines["ccache"].split()[1].startswith("1.0M") and "never pruned" in lines["ccache"]
    total = cachegc.parse_size(lines["total"].split()[1])
    assert total >= (512 + 1024) * KIB


def test_a_hard_linked_copy_counts_once(cache: Cache) -> None:
    """A patched tree is a hard-linked copy of its pristine tree: it costs the files the
    patches changed, and its files are freed only when both trees are gone."""
    pristine = entry(cache, "src", "pristine", 1024, days_ago=2)
    patched = cache.entry("src", "patched")
    patched.mkdir()
    os.link(pristine / "blob", patched / "blob")
    found, usage = measured(cache)
    assert usage.total < 1100 * KIB
    assert {e.key: e.size for e in found}["patched"] >= 512 * KIB  # its share of the blob
    assert usage.free(pristine) < 64 * KIB  # the blob is still the patched tree's
    assert usage.free(patched) >= 1024 * KIB


# --- prune -------------------------------------------------------------------------------


def test_max_size_removes_the_least_recently_used_first(capsys, cache: Cache) -> None:
    entry(cache, "kernels", "old", 256, days_ago=30)
    entry(cache, "rootfs", "older", 256, days_ago=40)
    entry(cache, "src", "new", 256, days_ago=1)
    # Built long ago but used yesterday: the last use counts, not the build.
    entry(cache, "qemu", "used", 256, days_ago=1.5)
    os.utime(cache.entry("qemu", "used"), (NOW - 90 * DAY, NOW - 90 * DAY))
    code, out, _ = run(capsys, "cache", "prune", "--max-size", "600K")
    assert code == 0
    removed = [line.split()[1] for line in out.splitlines() if line.startswith("removed")]
    assert removed == ["rootfs/older", "kernels/old"]
    assert left(cache) == ["qemu/used", "src/new"]
    assert not use_lock_path(cache.root, "rootfs", "older").exists()


def test_older_than_removes_only_what_was_not_used_since(capsys, cache: Cache) -> None:
    entry(cache, "kernels", "a", 64, days_ago=10)
    entry(cache, "selftests", "b", 64, days_ago=8)
    entry(cache, "pvh", "c", 64, days_ago=6)
    entry(cache, "snapshots", "d", 64, days_ago=0.5)
    code, out, _ = run(capsys, "cache", "prune", "--older-than", "1w")
    assert code == 0
    assert left(cache) == ["pvh/c", "snapshots/d"]
    assert "removed kernels/a" in out and "removed selftests/b" in out


def test_prune_never_removes_an_entry_a_running_lab_holds(capsys, cache, running_lab) -> None:
    entry(cache, "kernels", "held", 256, days_ago=50)
    entry(cache, "kernels", "free", 256, days_ago=40)
    entry(cache, "src", "recent", 256, days_ago=1)
    lab = running_lab("kernels", "held")
    code, out, _ = run(capsys, "cache", "prune", "--max-size", "600K")
    assert code == 0
    assert left(cache) == ["kernels/held", "src/recent"]
    assert "kept kernels/held" in out and "a running lab holds it" in out
    assert "held" in run(capsys, "cache", "list")[1].splitlines()[1]  # marked (in use)
    lab.kill()
    lab.wait()
    run(capsys, "cache", "prune", "--max-size", "300K")
    assert left(cache) == ["src/recent"]


def test_a_lab_that_wants_an_entry_being_removed_waits_and_locks_the_new_one(
    cache: Cache,
) -> None:
    """The lock file goes with its entry: a lab that opened it just before must not take
    a lock on the removed file, which would protect nothing."""
    entry(cache, "kernels", "k", 64, days_ago=5)
    lock = use_lock_path(cache.root, "kernels", "k")
    pruner = os.open(lock, os.O_RDWR)
    fcntl.flock(pruner, fcntl.LOCK_EX)
    user = threading.Thread(target=cache.use, args=("kernels", "k"))
    user.start()
    time.sleep(0.2)
    assert user.is_alive(), "use() must wait for the removal"
    lock.unlink()
    os.close(pruner)
    user.join(5)
    assert not user.is_alive()
    assert lock.exists()
    held = next(iter(cache._held.values()))
    assert os.fstat(held).st_ino == lock.stat().st_ino
    cache.release()


def test_use_records_the_last_use(cache: Cache) -> None:
    entry(cache, "kernels", "k", 64, days_ago=20)
    assert entries(cache)[0].last_use < NOW - 19 * DAY
    cache.use("kernels", "k")
    assert entries(cache)[0].last_use >= NOW - 5
    cache.release()


def test_prune_asks_for_a_criterion_and_a_valid_size(capsys, cache: Cache) -> None:
    code, _, err = run(capsys, "cache", "prune")
    assert code == 2 and "--max-size" in err and "--older-than" in err
    code, _, err = run(capsys, "cache", "prune", "--max-size", "lots")
    assert code == 2 and "'lots' is not a size" in err
    code, _, err = run(capsys, "cache", "prune", "--older-than", "7")
    assert code == 2 and "'7' is not an age" in err


def test_sizes_and_ages_parse() -> None:
    assert cachegc.parse_size("60G") == 60 << 30
    assert cachegc.parse_size("1.5t") == int(1.5 * (1 << 40))
    assert cachegc.parse_size("500MiB") == 500 << 20
    assert cachegc.parse_size("4096") == 4096
    assert cachegc.parse_age("2w") == 14 * DAY
    assert cachegc.parse_age("12h") == 12 * 3600
    assert cachegc.format_size(1536 * KIB) == "1.5M"


# --- clean -------------------------------------------------------------------------------


def test_clean_removes_every_entry_of_one_kind(capsys, cache: Cache, running_lab) -> None:
    entry(cache, "kernels", "a", 64, days_ago=1)
    entry(cache, "kernels", "b", 64, days_ago=100)
    entry(cache, "kernels", "c", 64, days_ago=2)
    entry(cache, "rootfs", "r", 64, days_ago=100)
    running_lab("kernels", "c")
    code, out, _ = run(capsys, "cache", "clean", "kernels")
    assert code == 0
    assert left(cache) == ["kernels/c", "rootfs/r"]
    assert "kept kernels/c" in out


def test_clean_of_an_unknown_kind_is_exit_2_naming_the_kinds(capsys, cache: Cache) -> None:
    code, _, err = run(capsys, "cache", "clean", "kernel")
    assert code == 2
    assert "invalid choice: 'kernel'" in err
    for kind in KINDS:
        assert kind in err


# --- local build directories ---------------------------------------------------------------


def test_build_directories_of_local_trees_are_entries(capsys, cache, tmp_path) -> None:
    tree = tmp_path / "linux"
    tree.mkdir()
    (tree / "Makefile").write_text("all:\n")
    build = tree / ".lab-build-0123abcd"
    build.mkdir()
    cache.use_local_build(tree, build)
    (build / "vmlinux").write_bytes(b"v" * 256 * KIB)
    record_made_by(build, "build directory of local:linux (config A=y)")
    cache.release()
    old = NOW - 20 * DAY
    os.utime(use_lock_path(cache.root, "local-build", str(build)), (old, old))
    os.utime(build, (old, old))
    unregistered = tmp_path / "other" / ".lab-build-ffffffff"
    unregistered.mkdir(parents=True)
    entry(cache, "kernels", "k", 64, days_ago=1)
    out = run(capsys, "cache", "list")[1]
    assert f"local-build {build} " in out and "(config A=y)" in out
    assert str(unregistered) not in out
    run(capsys, "cache", "prune", "--older-than", "10d")
    assert not build.exists() and (tree / "Makefile").exists()
    assert [p.name for p in tree.iterdir()] == ["Makefile"]
    assert left(cache) == ["kernels/k"]


# --- the ceiling -----------------------------------------------------------------------------


def test_the_ceiling_is_an_environment_variable(monkeypatch) -> None:
    monkeypatch.delenv(cachegc.CEILING_ENV, raising=False)
    assert cachegc.ceiling() == 60 << 30
    for off in ("0", "none", "None"):
        monkeypatch.setenv(cachegc.CEILING_ENV, off)
        assert cachegc.ceiling() is None
    monkeypatch.setenv(cachegc.CEILING_ENV, "20G")
    assert cachegc.ceiling() == 20 << 30


def test_a_bad_ceiling_stops_a_run_before_it_starts(capsys, cache, monkeypatch) -> None:
    monkeypatch.setenv(cachegc.CEILING_ENV, "lots")
    code, _, err = run(capsys, "run", "--results", str(cache.root.parent / "results"))
    assert code == 2
    assert "$VFIO_LAB_CACHE_MAX: 'lots' is not a size" in err


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """`vfio-lab run` in this process, every test passing: only the guest is a stand-in."""
    monkeypatch.setattr("lab.cli.common.doctor.require_qemu", lambda *a: None)
    monkeypatch.setattr(CellRun, "prepare", lambda self, result: None)

    def boot_and_test(self: CellRun, prepared: None, result: Any) -> PayloadOutcome:
        result.kernel_verified = True
        (self.dir / "console.log").write_text("")
        return PayloadOutcome({"lab": parse_text("TAP version 13\n1..1\nok 1 t.a\n")}, [], None)

    monkeypatch.setattr(CellRun, "boot_and_test", boot_and_test)
    scenario = tmp_path / "s.yaml"
    scenario.write_text("name: s\n")
    return lambda: main(["run", str(scenario), "-q", "--results", str(tmp_path / "r")])


def test_a_run_keeps_the_cache_within_its_ceiling(capsys, cache, fake_run, monkeypatch) -> None:
    entry(cache, "kernels", "oldest", 256, days_ago=30)
    entry(cache, "src", "older", 256, days_ago=20)
    entry(cache, "rootfs", "recent", 256, days_ago=1)
    monkeypatch.setenv(cachegc.CEILING_ENV, "400K")
    assert fake_run() == 0
    err = capsys.readouterr().err
    assert "is over its ceiling (VFIO_LAB_CACHE_MAX=400.0K)" in err
    removed = [line for line in err.splitlines() if line.startswith("removed")]
    assert [line.split()[1] for line in removed] == ["kernels/oldest", "src/older"]
    assert all(line.split()[2].endswith("K") for line in removed)
    assert left(cache) == ["rootfs/recent"]


def test_a_run_under_its_ceiling_removes_nothing(capsys, cache, fake_run, monkeypatch) -> None:
    entry(cache, "kernels", "oldest", 256, days_ago=30)
    monkeypatch.setenv(cachegc.CEILING_ENV, "none")
    assert fake_run() == 0
    assert "ceiling" not in capsys.readouterr().err
    assert left(cache) == ["kernels/oldest"]


def test_the_ceiling_keeps_what_the_finishing_command_holds(capsys, cache) -> None:
    entry(cache, "kernels", "mine", 256, days_ago=30)
    entry(cache, "src", "other", 256, days_ago=20)
    cache.use("kernels", "mine")
    keep_ceiling(cache, 100 * KIB)
    err = capsys.readouterr().err
    assert "removed src/other" in err and "kept kernels/mine" in err
    assert left(cache) == ["kernels/mine"]
    cache.release()


# --- snapshots ---------------------------------------------------------------------------


def test_keep_newest_keeps_the_most_recently_used_and_what_a_lab_holds(
    cache: Cache, running_lab
) -> None:
    for age, name in enumerate(["newest", "middle", "oldest", "ancient"]):
        entry(cache, "snapshots", name, 4, days_ago=age + 1)
    (cache.root / "snapshots" / ".half-built-abc").mkdir()
    running_lab("snapshots", "ancient")
    removed = cachegc.keep_newest(cache, "snapshots", keep=2)
    assert [e.key for e in removed] == ["oldest"]
    names = sorted(p.name for p in (cache.root / "snapshots").iterdir())
    assert names == [".half-built-abc", "ancient", "middle", "newest"]


# --- what made an entry ----------------------------------------------------------------------


def test_an_entry_says_what_made_it_and_an_old_one_learns_it_when_used(cache: Cache) -> None:
    cache.ensure("kernels", "new", lambda d: (d / "vmlinuz").write_bytes(b"k"), print,
                 made_by="kernel debian-stock:linux-image-6.1=1")  # fmt: skip
    old = cache.entry("kernels", "old")
    with cache.build("kernels", "old", "ignored") as scratch:
        (scratch / "vmlinuz").write_bytes(b"k")
    (old / ".made-by").unlink()  # as built by a lab from before the records
    assert cache.complete("kernels", "old", made_by="kernel local:/src/linux")
    by_key = {e.key: e.made_by for e in entries(cache)}
    assert by_key == {
        "new": "kernel debian-stock:linux-image-6.1=1",
        "old": "kernel local:/src/linux",
    }
    cache.release()


def test_a_cache_dropped_without_release_lets_go_of_its_entries(cache: Cache) -> None:
    entry(cache, "kernels", "k", 4, days_ago=1)
    (e,) = entries(cache)
    other = Cache(cache.root)
    other.use("kernels", "k")
    assert cachegc.in_use(cache, e)
    del other
    assert not cachegc.in_use(cache, e)
