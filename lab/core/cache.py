"""The artifact cache: content-keyed entries built atomically, outside the clone.

Layout under the root (default ~/.cache/vfio-lab, or $VFIO_LAB_CACHE):
  <kind>/<key>/    entries, one directory each (KINDS)
  keys/            the lab's SSH identities
  memo/<key>       answers worth not asking again (Cache.memo)
  in-use/<kind>/   one lock file per entry: held shared by each lab using the entry, its
                   mtime the entry's last use (Cache.use; lab.core.cachegc prunes)
  local-trees.json the `local:` checkouts the lab built in (their .lab-build-* directories
                   are entries of kind local-build)
  tmp/ (per-run scratch, emptied by its owner, or by `sweep` once the owner is gone)
  running/<id>.json  the guests running now (lab.vm.inventory), each naming its QEMU by
                   pid and start time; removed by the lab that started it, or by `sweep`
                   once that QEMU is gone

Every entry made by `Cache.build` carries a manifest of its top-level files and their
sizes, so `Cache.ensure` can tell a complete entry from one a full disk, a crash or a
careless `rm` left behind, and rebuild it instead of booting a truncated image; and a
line saying what it is (MADE_BY), for `vfio-lab cache list`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from lab.core.errors import HostIOError, InfraError
from lab.core.files import blaming, make_dir, write_atomic, write_file

MANIFEST = ".manifest.json"
OWNER = ".owner.json"
MADE_BY = ".made-by"
LOCAL_BUILD = "local-build"
LOCAL_TREES = "local-trees.json"
# The kinds of entry the lab makes, each a directory of the root but LOCAL_BUILD: the
# build directories inside the `local:` checkouts LOCAL_TREES lists.
KINDS = (
    "kernels",
    "src",
    LOCAL_BUILD,
    "selftests",
    "sysroot",
    "pvh",
    "rootfs",
    "snapshots",
    "qemu",
    "qemu-build",
    "packages",
)
# A source tree's build directories are its subdirectories named with this prefix.
BUILD_PREFIX = ".lab-build"
# An unowned scratch directory this young may be one whose owner has not written its
# owner file yet (mkdtemp and the write are two steps): leave it alone.
UNOWNED_GRACE_S = 60.0

Report = Callable[[str, str], None]  # a Progress, or anything called like one


class CorruptCacheFile(InfraError):
    """A file inside a cache entry cannot be read back; names the file and the way out."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"cache file {path} is corrupt ({reason}); delete {path.parent} to rebuild it"
        )


def default_root() -> Path:
    if env := os.environ.get("VFIO_LAB_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "vfio-lab"


def content_key(parts: Iterable[str | bytes]) -> str:
    """A short stable digest of the given parts, in order."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]


def tree_digest(root: Path) -> str:
    """Digest of every file below `root` (names and contents), ignoring caches."""
    parts: list[str | bytes] = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            parts += [str(path.relative_to(root)), path.read_bytes()]
    return content_key(parts)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- manifests -------------------------------------------------------------------------


def _describe(path: Path) -> dict[str, Any]:
    """What the manifest keeps of one top-level name: a file's size, or that a directory is
    there. Directories are not walked: a src entry is a whole kernel tree, and checking an
    entry must stay a handful of stat calls."""
    st = path.lstat()
    if stat.S_ISDIR(st.st_mode):
        return {"type": "dir"}
    if stat.S_ISREG(st.st_mode):
        return {"type": "file", "size": st.st_size}
    return {"type": "other"}


def write_manifest(directory: Path) -> None:
    """What `directory` holds now, but its manifest and its MADE_BY (a description only:
    an entry that lost it is still whole)."""
    files = {
        p.name: _describe(p)
        for p in sorted(directory.iterdir())
        if p.name not in (MANIFEST, MADE_BY)
    }
    write_file(directory / MANIFEST, json.dumps({"files": files}, indent=2) + "\n")


def record_made_by(directory: Path, text: str) -> None:
    """Say what made `directory` (an entry, a build directory), unless it says so already:
    entries from before these records get one when they are next used."""
    path = directory / MADE_BY
    if not path.exists():
        write_atomic(path, text + "\n")


def made_by(directory: Path) -> str:
    """What `directory` says made it, or "" when it does not say."""
    try:
        return (directory / MADE_BY).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _read_manifest(entry: Path) -> dict[str, dict[str, Any]] | str:
    """The manifest's files, or why there is none to trust."""
    try:
        files = json.loads((entry / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"{MANIFEST}: missing"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST}: unreadable: {e}"
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        return f"{MANIFEST}: unreadable: unexpected layout"
    return files


def _compare(entry: Path, name: str, expected: dict[str, Any]) -> str | None:
    """How one recorded name differs from what is on disk now, if it does."""
    try:
        actual = _describe(entry / name)
    except FileNotFoundError:
        return f"{name}: missing"
    if actual.get("type") != expected.get("type"):
        return f"{name}: a {actual.get('type')}, expected a {expected.get('type')}"
    if actual.get("size") != expected.get("size"):
        return f"{name}: {actual.get('size')} bytes, expected {expected.get('size')}"
    return None


def damage(entry: Path) -> str | None:
    """Why `entry` cannot be trusted (its manifest or files disagree), or None if it can."""
    files = _read_manifest(entry)
    if isinstance(files, str):
        return files
    problems = [p for name, want in files.items() if (p := _compare(entry, name, want))]
    return ", ".join(problems) or None


def _adoptable(entry: Path, legacy: str | None) -> bool:
    return legacy is not None and not (entry / MANIFEST).exists() and (entry / legacy).exists()


def discard(path: Path) -> None:
    """Remove an entry, first moving it off its name so a crash mid-removal cannot leave a
    half-deleted tree where the entry belongs."""
    with blaming(path):
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}-old-", dir=path.parent))
        os.rename(path, aside)  # replaces the empty directory mkdtemp made
    _write_owner(aside)  # so that `sweep` finishes the job if this process dies now
    shutil.rmtree(aside, ignore_errors=True)


# --- scratch owners --------------------------------------------------------------------


def process_start(pid: int) -> int | None:
    """The start time of a live process (field 22 of /proc/<pid>/stat, in clock ticks since
    boot), or None if there is no such process or it has exited (a zombie cleans nothing).
    The start time tells a reused pid from the process that wrote an owner file."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may hold spaces and parentheses: fields 3.. follow its last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[22 - 3])


def is_running(pid: int, start: int | None) -> bool:
    """Whether the process `pid` that started at `start` (process_start) runs still: a
    process that got its pid since is not it."""
    return start is not None and process_start(pid) == start


def _write_owner(directory: Path) -> None:
    """Record this process as the owner; written then renamed, so a reader sees either no
    owner file or a whole one."""
    pid = os.getpid()
    write_atomic(directory / OWNER, json.dumps({"pid": pid, "start": process_start(pid)}) + "\n")


def _read_owner(directory: Path) -> tuple[int, int] | None:
    """(pid, start time) of the owner, or None if the directory records none we can read."""
    return _read_process(directory / OWNER)


def _read_process(path: Path) -> tuple[int, int] | None:
    """The `pid` and `start` of the JSON object in `path`, or None if it has none we can
    read."""
    try:
        owner = json.loads(path.read_text())
        pid, start = owner["pid"], owner["start"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(pid, int) or not isinstance(start, int):
        return None
    return pid, start


def _abandoned(directory: Path, now: float) -> bool:
    owner = _read_owner(directory)
    if owner is None:
        try:
            mtime = directory.stat().st_mtime
        except FileNotFoundError:  # its owner removed it meanwhile
            return False
        # A directory's mtime is no older than the directory: a conservative age.
        return now - mtime >= UNOWNED_GRACE_S
    return not is_running(*owner)


def use_lock_path(root: Path, kind: str, key: str) -> Path:
    """The lock file that marks entry (kind, key) in use; a key that is not a plain name
    (a local build directory's path) is named by its digest."""
    if kind not in KINDS:
        raise ValueError(f"{kind!r} is not a kind of cache entry ({', '.join(KINDS)})")
    name = key if key.replace("-", "").replace(".", "").isalnum() else content_key([key])
    return root / "in-use" / kind / name


def open_lock(path: Path) -> int:
    """A descriptor of the lock file at `path`, created if missing."""
    make_dir(path.parent)
    with blaming(path):
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def still_named(fd: int, path: Path) -> bool:
    """Whether `path` is still the file `fd` locked: a pruner removes an entry's lock file
    with the entry, and a lock on the removed file protects nothing."""
    try:
        return os.fstat(fd).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


def _close_all(held: dict[Path, int]) -> None:
    for fd in held.values():
        os.close(fd)
    held.clear()


class Cache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_root()
        self._held: dict[Path, int] = {}  # in-use locks this process holds, by lock file
        self._held_lock = threading.Lock()  # cells are prepared from several threads
        # A Cache dropped without `release` lets go of its entries all the same.
        weakref.finalize(self, _close_all, self._held)
        self.built = 0  # entries this object built: the cache grew only if some were

    def entry(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def use(self, kind: str, key: str) -> None:
        """Mark entry (kind, key) used now, and in use by this process until `release`:
        a shared lock on its lock file, which `vfio-lab cache prune` (an exclusive one,
        not waited for) never gets while a lab holds it. Taken before the entry is looked
        at or built, so that no prune removes it between the check and its use."""
        path = use_lock_path(self.root, kind, key)
        with self._held_lock:
            fd = self._held.get(path)
        if fd is None:
            fd = self._lock_shared(path)
            with self._held_lock:
                if path in self._held:  # another thread of this process took it meanwhile
                    os.close(fd)
                    fd = self._held[path]
                else:
                    self._held[path] = fd
        with blaming(path):
            os.utime(fd)  # the entry's last use: atime is no clock under relatime

    @staticmethod
    def _lock_shared(path: Path) -> int:
        while True:
            fd = open_lock(path)
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only for a prune removing the entry now
            if still_named(fd, path):
                return fd
            os.close(fd)  # it was removed with its entry: lock the new one

    def release(self) -> None:
        """Let go of every entry this process marked in use (the run is over)."""
        with self._held_lock:
            _close_all(self._held)

    def use_local_build(self, tree: Path, build_dir: Path) -> None:
        """Mark a build directory inside a `local:` checkout in use, and remember the
        checkout, so that `vfio-lab cache` finds its build directories."""
        self.use(LOCAL_BUILD, str(build_dir.resolve()))
        with self.lock("local-trees"):
            trees = self.local_trees()
            if tree.resolve() not in trees:
                listed = [str(t) for t in [*trees, tree.resolve()]]
                write_atomic(self.root / LOCAL_TREES, json.dumps({"trees": listed}, indent=2))

    def local_trees(self) -> list[Path]:
        """The `local:` checkouts the lab has built in (an unreadable record: none)."""
        try:
            trees = json.loads((self.root / LOCAL_TREES).read_text())["trees"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return [Path(t) for t in trees if isinstance(t, str)]

    @property
    def tmp(self) -> Path:
        path = self.root / "tmp"
        make_dir(path)
        return path

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Serialise builds of one entry across processes (parallel cells, two shells)."""
        path = self.root / "locks" / name
        make_dir(path.parent)
        with blaming(path):
            f = path.open("w")
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def build(self, kind: str, key: str, made_by: str) -> Iterator[Path]:
        """Yield a scratch directory that becomes entry(kind, key) only if the block succeeds,
        with a manifest of what it held then and `made_by`, a line saying what it is."""
        final = self.entry(kind, key)
        make_dir(final.parent)
        with blaming(final.parent):
            scratch = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
        try:
            # A half-built entry (a kernel tree, a root filesystem) is big: `sweep` removes
            # it once its owner is gone.
            _write_owner(scratch)
            yield scratch
            with blaming(scratch / OWNER):
                (scratch / OWNER).unlink()
            record_made_by(scratch, made_by)
            write_manifest(scratch)
            if final.exists():  # a damaged entry being replaced: rename cannot overwrite it
                discard(final)
            with blaming(final):
                os.rename(scratch, final)
            self.built += 1
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def ensure(
        self,
        kind: str,
        key: str,
        build: Callable[[Path], None],
        progress: Report,
        *,
        made_by: str,
        legacy: str | None = None,
    ) -> Path:
        """entry(kind, key), marked in use (see `use`), built by `build(scratch)` if it is
        missing, and rebuilt (saying so through `progress`) if it is damaged; `made_by`
        says what it is. The caller holds the entry's lock: the check and the rebuild must
        not interleave with another process's build.

        `legacy` names the file whose presence marked a complete entry before manifests
        existed (entries were already built atomically then): such an entry is adopted
        with a manifest of what it holds, not rebuilt."""
        entry = self.entry(kind, key)
        if self.intact(kind, key, progress, made_by, legacy):
            return entry
        if entry.exists():
            # Before the build, not after: a damaged kernel tree or image is big, and the
            # disk may be why it is damaged.
            discard(entry)
        with self.build(kind, key, made_by) as scratch:
            build(scratch)
        return entry

    def intact(
        self,
        kind: str,
        key: str,
        progress: Report,
        made_by: str,
        legacy: str | None = None,
    ) -> bool:
        """entry(kind, key), marked in use, is there and whole, by its own manifest and
        nothing else. One that is there but damaged is named with why through `progress`,
        since the caller rebuilds it now; one from before manifests (see `ensure`) is
        adopted; one from before MADE_BY records is given `made_by`."""
        self.use(kind, key)
        entry = self.entry(kind, key)
        if not entry.exists():
            return False
        why = damage(entry)
        if why is not None and _adoptable(entry, legacy):
            progress("cache", f"cache entry {kind}/{key} predates manifests; adopting it")
            write_manifest(entry)
            why = None
        elif why is not None:
            progress("cache", f"cache entry {kind}/{key} is damaged ({why}); rebuilding")
        if why is None:
            record_made_by(entry, made_by)
        return why is None

    def memo(self, parts: Iterable[str], compute: Callable[[], str]) -> str:
        """`compute()`, remembered under the digest of `parts`: answers that cost seconds to
        find (apt look-ups, a config merge) but are fixed by their inputs, so that a warm
        run asks nothing twice. `parts` must name every input the answer depends on."""
        parts = list(parts)
        known = self.recall(parts)
        if known is not None:
            return known
        value = compute()
        self.remember(parts, value)
        return value

    def recall(self, parts: Iterable[str]) -> str | None:
        with contextlib.suppress(OSError):
            return self.entry("memo", content_key(parts)).read_text()
        return None

    def remember(self, parts: Iterable[str], value: str) -> None:
        path = self.entry("memo", content_key(parts))
        make_dir(path.parent)
        write_atomic(path, value)

    def complete(self, kind: str, key: str, made_by: str) -> bool:
        """entry(kind, key), marked in use, is there and whole (its manifest matches); one
        from before MADE_BY records is given `made_by`."""
        self.use(kind, key)
        entry = self.entry(kind, key)
        if not entry.exists() or damage(entry) is not None:
            return False
        record_made_by(entry, made_by)
        return True

    @contextlib.contextmanager
    def scratch(self, prefix: str, *, sockets: bool = False) -> Iterator[Path]:
        """A temporary directory under tmp/ (or, for UNIX sockets, under `sockets`), removed
        whatever happens; marked with its owner so that `sweep` can remove it if this
        process is killed before the finally runs."""
        where = self.sockets if sockets else self.tmp
        with blaming(where):
            path = (
                self._socket_scratch(prefix)
                if sockets
                else Path(tempfile.mkdtemp(prefix=prefix, dir=where))
            )
        try:
            _write_owner(path)
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            if sockets:
                with contextlib.suppress(OSError):  # another guest's sockets may be there
                    where.rmdir()

    @property
    def running(self) -> Path:
        """Where lab.vm.inventory announces the guests running now."""
        return self.root / "running"

    @property
    def sockets(self) -> Path:
        """Where QEMU's UNIX sockets go: a socket's path must fit sun_path (108 bytes) and
        the cache may be deep (a CI runner's build directory, a long home), so a short
        directory in /tmp of this user's own, one per cache."""
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:8]
        return Path(tempfile.gettempdir()) / f"vfio-lab-{os.getuid()}-{digest}"

    def socket_dirs(self) -> list[Path]:
        """The guests' socket directories (none when another lab just removed their home)."""
        try:
            return sorted(self.sockets.iterdir())
        except FileNotFoundError:
            return []

    def _socket_scratch(self, prefix: str) -> Path:
        for _ in range(3):
            # Another lab on this cache may remove the directory with its last guest.
            with contextlib.suppress(FileNotFoundError):
                return Path(tempfile.mkdtemp(prefix=prefix, dir=self._socket_dir()))
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self._socket_dir()))

    def _socket_dir(self) -> Path:
        path = self.sockets
        with blaming(path):
            with contextlib.suppress(FileExistsError):  # ours from a guest before, or not
                path.mkdir(mode=0o700)
            st = path.lstat()
        # /tmp is shared: a directory someone else made there in advance is not ours to use.
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise HostIOError(path, None, "exists and is not a directory of this user's")
        return path

    def sweep(self) -> list[Path]:
        """Remove the scratch directories whose owner is gone (killed labs leave
        multi-gigabyte overlays and half-built entries behind), and return them: those
        under tmp/, and the hidden build directories beside the entries of each kind. A
        directory whose owner is alive is kept; one without an owner is kept while it is
        young enough to be mid-creation (under tmp/) or always (beside entries, where an
        older lab built without owners). So are the announcements in running/ whose QEMU
        is gone (it dies with its killed lab), which would otherwise list a guest that is
        not there once its pid is reused."""
        removed = []
        now = time.time()
        for path in [*sorted(self.tmp.iterdir()), *self.socket_dirs()]:
            if path.is_dir() and not path.is_symlink() and _abandoned(path, now):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        for path in sorted(self.root.glob("*/.*-*")):
            if path.is_dir() and _read_owner(path) is not None and _abandoned(path, now):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        for path in sorted(self.running.glob("*.json")):
            if (qemu := _read_process(path)) is not None and not is_running(*qemu):
                path.unlink(missing_ok=True)
                removed.append(path)
        with contextlib.suppress(OSError):  # gone, or a live guest's sockets are there
            self.sockets.rmdir()
        return removed
