"""What a developer's git checkout holds now: HEAD's commit, and the content of every path
whose content differs from HEAD's, tracked or untracked (ignored files are not the tree's:
the build directories inside it, the kernel's own build outputs).

It asks `git status` (the index's stat data, refreshed and written back, and the untracked
cache, so a warm query stats little and reads nothing) and hashes only the paths it
names. The content is what is on disk, staged or not: the build reads the disk, not the
index, so `git add` changes nothing and an edit undone is no edit.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lab.core.cache import content_key
from lab.core.proc import capture

# `git hash-object` takes the changed paths in its argv, in batches this long: paths are
# passed as they are (no quoting of a newline in a name), and far below ARG_MAX.
_ARGV_BATCH = 64 << 10
_ABSENT = "deleted"  # what is at a path that is not there, on disk or in HEAD


@dataclass(frozen=True)
class Change:
    path: str  # relative to the checkout, as git names it
    content: str  # "100644 <blob>", "100755 <blob>", "link <target>", "git <identity>", "deleted"


@dataclass(frozen=True)
class TreeState:
    head: str
    changes: tuple[Change, ...]  # sorted by path

    def identity(self, only: Callable[[str], object] = bool) -> str:
        """git:HEAD, plus a digest of the changes whose path `only` keeps (all by
        default), if any."""
        kept = [part for c in self.changes if only(c.path) for part in (c.path, c.content)]
        return f"git:{self.head}+{content_key(kept)}" if kept else f"git:{self.head}"


def _git(tree: Path, *args: str) -> str:
    # Porcelain in one language; the untracked cache, so that a big tree's untracked files
    # are found by the directories whose mtime changed, not by reading every directory
    # (git keeps it for --untracked-files=all only where that is the configured mode:
    # without it, the walk is 0.4 s of a kernel tree's 0.6).
    env = {**os.environ, "LC_ALL": "C"}
    cache = ["-c", "core.untrackedCache=true", "-c", "status.showUntrackedFiles=all"]
    argv = ["git", *cache, "-C", str(tree), *args]
    return capture(argv, artifact="kernel", env=env)


def tree_state(tree: Path) -> TreeState:
    """The checkout's state; BuildError if `tree` is no git checkout with a commit."""
    head = _git(tree, "rev-parse", "--verify", "HEAD").strip()
    status = _git(tree, "status", "--porcelain=v2", "-z", "--untracked-files=all", "--no-renames")
    candidates = _changed_paths(status)
    on_disk = {path: _content(tree, path) for path in candidates}
    regular = [path for path, content in on_disk.items() if content.startswith("100")]
    for path, blob in zip(regular, _hash_objects(tree, regular), strict=True):
        on_disk[path] = f"{on_disk[path]} {blob}"
    changes = (
        Change(path, content)
        for path, content in sorted(on_disk.items())
        if content != candidates[path]
    )
    return TreeState(head, tuple(changes))


def _changed_paths(status: str) -> dict[str, str]:
    """(path, what HEAD has there, as _content says it) for every path `git status
    --porcelain=v2 -z --no-renames` names. A path named twice (`git rm --cached`: deleted
    in the index and untracked on disk) keeps what HEAD has. An unmerged path is always a
    change (its record names no HEAD blob)."""
    seen: dict[str, str] = {}
    for record in filter(None, status.split("\0")):
        kind = record[0]
        if kind == "1":  # 1 XY sub mH mI mW hH hI path
            fields = record.split(" ", 8)
            mode, blob = fields[3], fields[6]
            seen[fields[8]] = _ABSENT if mode == "000000" else f"{mode} {blob}"
        elif kind == "u":  # u XY sub m1 m2 m3 mW h1 h2 h3 path
            seen.setdefault(record.split(" ", 10)[10], "unmerged")
        elif kind == "?":
            seen.setdefault(record[2:], _ABSENT)
    return seen


def _content(tree: Path, path: str) -> str:
    """What is at `path` now, less a regular file's blob (hashed in one batch after)."""
    try:
        st = (tree / path).lstat()
    except FileNotFoundError:
        return _ABSENT
    if stat.S_ISLNK(st.st_mode):
        return f"link {os.readlink(tree / path)}"
    if stat.S_ISDIR(st.st_mode):  # a submodule, or a repository nested untracked
        return f"git {tree_state(tree / path).identity()}"
    if not stat.S_ISREG(st.st_mode):  # a FIFO where a file was: no content to read
        return f"special {stat.filemode(st.st_mode)}"
    return "100755" if st.st_mode & stat.S_IXUSR else "100644"


def _hash_objects(tree: Path, paths: list[str]) -> list[str]:
    """The blob each path's content would be stored as (its attributes' filters applied)."""
    return [
        blob
        for batch in _batches(paths)
        for blob in _git(tree, "hash-object", "--", *batch).split()
    ]


def _batches(paths: list[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for path in paths:
        if batch and size + len(path) > _ARGV_BATCH:
            yield batch
            batch, size = [], 0
        batch.append(path)
        size += len(path) + 1
    if batch:
        yield batch
