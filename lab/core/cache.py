"""The artifact cache: content-keyed entries built atomically, outside the clone.

Layout under the root (default ~/.cache/vfio-lab, or $VFIO_LAB_CACHE):
  kernels/<key>/   rootfs/<key>/   src/<key>/   keys/
  memo/<key>       answers worth not asking again (Cache.memo)
  tmp/ (per-run scratch, emptied by its owner, or by `sweep` once the owner is gone)

Every entry made by `Cache.build` carries a manifest of its top-level files and their
sizes, so `Cache.ensure` can tell a complete entry from one a full disk, a crash or a
careless `rm` left behind, and rebuild it instead of booting a truncated image.
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
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from lab.core.errors import InfraError
from lab.core.files import blaming, make_dir, write_atomic, write_file

MANIFEST = ".manifest.json"
OWNER = ".owner.json"
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
    files = {p.name: _describe(p) for p in sorted(directory.iterdir()) if p.name != MANIFEST}
    write_file(directory / MANIFEST, json.dumps({"files": files}, indent=2) + "\n")


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


def _discard(path: Path) -> None:
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


def _write_owner(directory: Path) -> None:
    """Record this process as the owner; written then renamed, so a reader sees either no
    owner file or a whole one."""
    pid = os.getpid()
    write_atomic(directory / OWNER, json.dumps({"pid": pid, "start": process_start(pid)}) + "\n")


def _read_owner(directory: Path) -> tuple[int, int] | None:
    """(pid, start time) of the owner, or None if the directory records none we can read."""
    try:
        owner = json.loads((directory / OWNER).read_text())
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
    pid, start = owner
    return process_start(pid) != start


class Cache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_root()

    def entry(self, kind: str, key: str) -> Path:
        return self.root / kind / key

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
    def build(self, kind: str, key: str) -> Iterator[Path]:
        """Yield a scratch directory that becomes entry(kind, key) only if the block succeeds,
        with a manifest of what it held then."""
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
            write_manifest(scratch)
            if final.exists():  # a damaged entry being replaced: rename cannot overwrite it
                _discard(final)
            with blaming(final):
                os.rename(scratch, final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def ensure(
        self,
        kind: str,
        key: str,
        build: Callable[[Path], None],
        progress: Report,
        legacy: str | None = None,
    ) -> Path:
        """entry(kind, key), built by `build(scratch)` if it is missing, and rebuilt (saying
        so through `progress`) if it is damaged. The caller holds the entry's lock: the check
        and the rebuild must not interleave with another process's build.

        `legacy` names the file whose presence marked a complete entry before manifests
        existed (entries were already built atomically then): such an entry is adopted
        with a manifest of what it holds, not rebuilt."""
        entry = self.entry(kind, key)
        if self.intact(kind, key, progress, legacy):
            return entry
        if entry.exists():
            # Before the build, not after: a damaged kernel tree or image is big, and the
            # disk may be why it is damaged.
            _discard(entry)
        with self.build(kind, key) as scratch:
            build(scratch)
        return entry

    def intact(self, kind: str, key: str, progress: Report, legacy: str | None = None) -> bool:
        """entry(kind, key) is there and whole, by its own manifest and nothing else. One
        that is there but damaged is named with why through `progress`, since the caller
        rebuilds it now; one from before manifests (see `ensure`) is adopted."""
        entry = self.entry(kind, key)
        if not entry.exists():
            return False
        why = damage(entry)
        if why is not None and _adoptable(entry, legacy):
            progress("cache", f"cache entry {kind}/{key} predates manifests; adopting it")
            write_manifest(entry)
            return True
        if why is not None:
            progress("cache", f"cache entry {kind}/{key} is damaged ({why}); rebuilding")
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

    def complete(self, kind: str, key: str) -> bool:
        """entry(kind, key) is there and whole (its manifest matches)."""
        entry = self.entry(kind, key)
        return entry.exists() and damage(entry) is None

    @contextlib.contextmanager
    def scratch(self, prefix: str) -> Iterator[Path]:
        """A temporary directory under tmp/, removed whatever happens; marked with its owner
        so that `sweep` can remove it if this process is killed before the finally runs."""
        with blaming(self.tmp):
            path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp))
        try:
            _write_owner(path)
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def sweep(self) -> list[Path]:
        """Remove the scratch directories whose owner is gone (killed labs leave
        multi-gigabyte overlays and half-built entries behind), and return them: those
        under tmp/, and the hidden build directories beside the entries of each kind. A
        directory whose owner is alive is kept; one without an owner is kept while it is
        young enough to be mid-creation (under tmp/) or always (beside entries, where an
        older lab built without owners)."""
        removed = []
        now = time.time()
        for path in sorted(self.tmp.iterdir()):
            if path.is_dir() and not path.is_symlink() and _abandoned(path, now):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        for path in sorted(self.root.glob("*/.*-*")):
            if path.is_dir() and _read_owner(path) is not None and _abandoned(path, now):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed
