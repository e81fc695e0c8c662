"""Writing host files (results, cache, scratch) so that a reader, or a crash, never sees
half of one, and a host fault is a HostIOError naming the file the lab was writing.

The OS's error does not always name that file: a copy that fills the disk names its
source, a write to an open file names nothing. Blaming the source would condemn a cache
entry for a full results directory, so every write here says itself what it blames.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from lab.core.errors import HostIOError

COPY_BLOCK = 64 << 20  # per sendfile call, so that Ctrl-C is not kept waiting


@contextlib.contextmanager
def blaming(path: Path) -> Iterator[None]:
    """Any OSError in the block is a HostIOError that names `path`."""
    try:
        yield
    except OSError as e:
        raise HostIOError(path, e.errno, e.strerror) from e


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`.

    The temporary name is unique, so two writers (threads, processes) never share it."""
    with blaming(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_file(path: Path, data: str | bytes) -> None:
    """Write a whole file in place (one a reader only opens once the lab is done with it)."""
    with blaming(path):
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)


def make_dir(path: Path, exist_ok: bool = True) -> None:
    with blaming(path):
        path.mkdir(parents=True, exist_ok=exist_ok)


def copy_file(src: Path, dst: Path, *, link: bool = False) -> None:
    """Put `src`'s content and mode at `dst` (replacing it) as cheaply as the filesystem
    allows, blaming the side that failed: reading `src`, or writing `dst` (shutil's
    ENOSPC would name the source).

    `link`: neither file is ever written in place, nor chmod-ed, while the other lives
    (a staging directory's inputs): `dst` is a hard link, one more name of `src`'s inode.
    Otherwise (or where no link can be made: another filesystem, a refusal) a reflink,
    which shares the blocks copy-on-write so that a write to either stays its own, and
    where the filesystem has none, a copy. `dst` is unlinked first, never truncated: it may
    be another file's hard link."""
    with blaming(dst):
        dst.unlink(missing_ok=True)
    if link and _linked(src, dst):
        return
    with HostFile(src, "rb") as fin, HostFile(dst, "wb") as fout:
        if not _cloned(fin, fout):
            _send(fin, fout)
    with blaming(dst):
        shutil.copymode(src, dst)


# Why a hard link or a reflink cannot be made where a copy can: another filesystem, a
# filesystem without them, a link the kernel refuses (fs.protected_hardlinks, a full
# link count).
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP}
_NO_CLONE = {errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL}
FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def _linked(src: Path, dst: Path) -> bool:
    with blaming(src):
        src.stat()
    with blaming(dst):
        return _done_unless(lambda: os.link(src, dst), _NO_LINK)


def _cloned(fin: HostFile, fout: HostFile) -> bool:
    with blaming(fout.path):
        return _done_unless(lambda: fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno()), _NO_CLONE)


def _done_unless(attempt: Callable[[], object], refusals: set[int]) -> bool:
    """True when `attempt` worked, False when it failed in a way a plain copy gets past."""
    try:
        attempt()
    except OSError as e:
        if e.errno in refusals:
            return False
        raise
    return True


def _send(fin: HostFile, fout: HostFile) -> None:
    offset = 0
    while True:
        try:
            sent = os.sendfile(fout.fileno(), fin.fileno(), offset, COPY_BLOCK)
        except OSError as e:
            # sendfile's error does not say which side failed: the source is read again
            # here, and is to blame only if that fails too.
            with blaming(fin.path):
                os.pread(fin.fileno(), 1, offset)
            raise HostIOError(fout.path, e.errno, e.strerror) from e
        if sent == 0:
            return
        offset += sent


def move(src: Path, dst: Path) -> None:
    """Move `src` to `dst`: a rename on one filesystem, else a copy that blames its side."""
    try:
        os.replace(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise HostIOError(dst, e.errno, e.strerror) from e
        copy_file(src, dst)
        with blaming(src):
            src.unlink()


class HostFile:
    """A host file the lab streams into (a log, a TAP stream, a Popen's stdout) or copies:
    opening, writing and closing it blame `path`."""

    def __init__(self, path: Path, mode: str = "w", buffering: int = -1) -> None:
        self.path = path
        with blaming(path):
            self.file: IO[Any] = path.open(mode, buffering=buffering)

    def write(self, data: Any) -> None:
        with blaming(self.path):
            self.file.write(data)

    def flush(self) -> None:
        with blaming(self.path):
            self.file.flush()

    def fileno(self) -> int:
        return self.file.fileno()

    def close(self) -> None:
        with blaming(self.path):
            self.file.close()

    def __enter__(self) -> HostFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:  # the block's error is the one to tell; a close that fails too adds nothing
            with contextlib.suppress(HostIOError):
                self.close()
