"""The artifact cache: content-keyed entries built atomically, outside the clone.

Layout under the root (default ~/.cache/vfio-lab, or $VFIO_LAB_CACHE):
  kernels/<key>/   rootfs/<key>/   keys/   tmp/ (per-run scratch, emptied by its owner)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


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


class Cache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_root()

    def entry(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    @property
    def tmp(self) -> Path:
        path = self.root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Serialise builds of one entry across processes (parallel cells, two shells)."""
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        with open(self.root / "locks" / name, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def build(self, kind: str, key: str) -> Iterator[Path]:
        """Yield a scratch directory that becomes entry(kind, key) only if the block succeeds."""
        final = self.entry(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
        try:
            yield scratch
            os.rename(scratch, final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    @contextlib.contextmanager
    def scratch(self, prefix: str) -> Iterator[Path]:
        """A temporary directory under tmp/, removed whatever happens."""
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
