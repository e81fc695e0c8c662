"""Keeping the cache within a size: what each entry is, how much disk it takes, when it was
last used; removing the least recently used first, and never an entry a running lab holds.

A lab marks every entry it uses with a shared lock on the entry's lock file (Cache.use),
whose mtime is the entry's last use. Removing an entry takes that lock exclusively, and
does not wait: an entry whose lock is held is in use, and kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lab.core.cache import (
    BUILD_PREFIX,
    KINDS,
    LOCAL_BUILD,
    Cache,
    discard,
    made_by,
    open_lock,
    still_named,
    use_lock_path,
)
from lab.core.errors import UsageError

CEILING_ENV = "VFIO_LAB_CACHE_MAX"
DEFAULT_CEILING = 60 << 30
UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)

Inode = tuple[int, int]  # (st_dev, st_ino)


@dataclass
class Entry:
    kind: str
    key: str  # a local build directory's key is its path
    path: Path
    made_by: str
    last_use: float  # seconds since the epoch
    size: int = 0  # bytes on disk (`measured` fills it in)

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.key}"


def entries(cache: Cache, kinds: Iterable[str] = KINDS) -> list[Entry]:
    """The entries of `kinds`, least recently used first (the order they are pruned in)."""
    found = [
        Entry(kind, key, path, made_by(path), last_use(cache, kind, key, path))
        for kind in kinds
        for key, path in _entry_dirs(cache, kind)
    ]
    return sorted(found, key=lambda e: e.last_use)


def _entry_dirs(cache: Cache, kind: str) -> list[tuple[str, Path]]:
    if kind == LOCAL_BUILD:
        dirs = [d for tree in cache.local_trees() for d in tree.glob(f"{BUILD_PREFIX}-*")]
        return [(str(d), d) for d in sorted(dirs) if _real_dir(d)]
    parent = cache.root / kind
    if not parent.is_dir():
        return []
    # Hidden names are half-built entries and entries being removed: `sweep`'s business.
    return [(d.name, d) for d in sorted(parent.iterdir()) if _real_dir(d) and d.name[0] != "."]


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def last_use(cache: Cache, kind: str, key: str, path: Path) -> float:
    """When the entry was last used: its lock file's mtime (Cache.use touches it), or for
    an entry no lab has marked yet, its directory's (when it was made, about)."""
    times = []
    for p in (use_lock_path(cache.root, kind, key), path):
        with contextlib.suppress(OSError):
            times.append(p.stat().st_mtime)
    return max(times, default=0.0)


def measured(cache: Cache, kinds: Iterable[str] = KINDS) -> tuple[list[Entry], Usage]:
    """`entries`, with their sizes, and the disk they take in all."""
    found = entries(cache, kinds)
    usage = Usage(e.path for e in found)
    for e in found:
        e.size = usage.size(e.path)
    return found, usage


def in_use(cache: Cache, entry: Entry) -> bool:
    """Whether a running lab holds `entry` now (a lab that never marked it does not)."""
    path = use_lock_path(cache.root, entry.kind, entry.key)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def remove(cache: Cache, entry: Entry) -> bool:
    """Remove `entry` unless a running lab holds it; whether it was removed. The exclusive
    lock is held while the entry goes, so a lab that wants it meanwhile waits, then
    builds it again."""
    lock = use_lock_path(cache.root, entry.kind, entry.key)
    fd = open_lock(lock)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if not still_named(fd, lock):  # another pruner removed it just now
            return False
        if entry.path.exists():
            discard(entry.path)
        lock.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


# --- disk usage --------------------------------------------------------------------------


@dataclass
class _Walked:
    own: int = 0  # bytes of files no other name links to
    links: dict[Inode, int] = field(default_factory=dict)  # hard-linked files: links here


class Usage:
    """The disk some directories take, each file once: a patched source tree is a
    hard-linked copy of its pristine tree and costs only the files the patches changed. A
    file linked from several directories is shared out between them in their `size`, and
    is freed only when the last of them goes (`free`)."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self._bytes: dict[Inode, int] = {}
        self._links_left: dict[Inode, int] = {}
        self._walked = {path: self._walk(path) for path in paths}
        self.total = sum(self.size(path) for path in self._walked)

    def size(self, path: Path) -> int:
        walked = self._walked[path]
        shared = (self._bytes[ino] * n // self._links_left[ino] for ino, n in walked.links.items())
        return walked.own + sum(shared)

    def _walk(self, top: Path) -> _Walked:
        walked = _Walked()
        with contextlib.suppress(OSError):
            walked.own += top.lstat().st_blocks * 512
        stack = [str(top)]
        while stack:
            try:
                listing = os.scandir(stack.pop())
            except OSError:  # gone meanwhile, or unreadable: it holds nothing we can count
                continue
            with listing:
                for item in listing:
                    try:
                        st = item.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    is_dir = stat.S_ISDIR(st.st_mode)
                    if is_dir:
                        stack.append(item.path)
                    if st.st_nlink > 1 and not is_dir:
                        ino = (st.st_dev, st.st_ino)
                        walked.links[ino] = walked.links.get(ino, 0) + 1
                        self._bytes[ino] = st.st_blocks * 512
                        # Links from outside the directories measured are not counted, as
                        # du does not: the file counts here in full.
                        self._links_left[ino] = self._links_left.get(ino, 0) + 1
                    else:
                        walked.own += st.st_blocks * 512
        return walked

    def free(self, path: Path) -> int:
        """Account for `path` removed: returns the bytes that freed (the total drops by as
        much); what it shared with a directory still there stays counted there."""
        walked = self._walked.pop(path)
        freed = walked.own
        for ino, n in walked.links.items():
            self._links_left[ino] -= n
            if self._links_left[ino] <= 0:
                freed += self._bytes[ino]
        self.total -= freed
        return freed


# --- pruning -----------------------------------------------------------------------------


@dataclass
class Pruned:
    removed: list[Entry]
    in_use: list[Entry]  # were due to go, but a running lab holds them
    total: int  # bytes the entries left take


def prune(
    cache: Cache,
    found: list[Entry],
    usage: Usage,
    max_size: int | None = None,
    older_than: float | None = None,
    now: float = 0.0,
) -> Pruned:
    """Remove entries least recently used first (`found` is in that order) while the
    total is over `max_size` or the entry was last used more than `older_than` seconds
    before `now`; entries a running lab holds are kept and named."""
    removed, held = [], []
    for entry in found:
        old = older_than is not None and now - entry.last_use > older_than
        over = max_size is not None and usage.total > max_size
        if not (old or over):
            break  # the rest were used later, and the total only shrinks
        if remove(cache, entry):
            usage.free(entry.path)
            removed.append(entry)
        else:
            held.append(entry)
    return Pruned(removed, held, usage.total)


def keep_newest(cache: Cache, kind: str, keep: int) -> list[Entry]:
    """Remove all but the `keep` most recently used entries of `kind` (those a running lab
    holds stay too); returns what was removed."""
    found = entries(cache, [kind])
    return [e for e in found[: max(len(found) - keep, 0)] if remove(cache, e)]


# --- sizes, ages, the ceiling --------------------------------------------------------------


def parse_size(text: str) -> int:
    """`60G`, `500M`, `1.5T`, `4096`: bytes (K, M, G, T are powers of 1024)."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a size (like 60G, 500M or 4096)")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


def parse_age(text: str) -> float:
    """`7d`, `12h`, `30m`, `2w`, `90s`: seconds."""
    m = _AGE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not an age (like 7d, 12h, 30m, 2w or 90s)")
    return float(m.group(1)) * AGE_UNITS[m.group(2).lower()]


def format_size(size: int) -> str:
    value = float(size)
    for unit in "BKMG":
        if value < 1024:
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}T"


def ceiling() -> int | None:
    """The size the cache is pruned to after each run: $VFIO_LAB_CACHE_MAX, 60G when it is
    not set; None when it is 0 or none (no ceiling)."""
    text = os.environ.get(CEILING_ENV, "").strip()
    if not text:
        return DEFAULT_CEILING
    if text.lower() == "none":
        return None
    try:
        size = parse_size(text)
    except ValueError as e:
        raise UsageError(f"${CEILING_ENV}: {e}; 0 or none: no ceiling") from None
    return size or None
