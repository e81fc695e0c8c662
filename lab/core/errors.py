"""The one exception hierarchy of the lab.

Library code raises these with structured fields; only the CLI turns them into
messages and exit codes (`exit_code` is the contract the CLI relies on).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class LabError(Exception):
    """Root of every error the lab raises on purpose."""

    exit_code = 3


class UsageError(LabError):
    """The user asked for something that cannot be done as asked."""

    exit_code = 2


class ScenarioError(UsageError):
    """A scenario file is invalid; names the file, the line and the field."""

    def __init__(self, file: Path | str, line: int | None, field: str, message: str) -> None:
        self.file = Path(file)
        self.line = line
        self.field = field
        self.message = message
        where = f"{self.file}:{line}" if line is not None else str(self.file)
        super().__init__(f"{where}: {field}: {message}")


class InfraError(LabError):
    """The lab could not do its own part: build, boot, SSH, a missing tool."""

    exit_code = 3


class HostIOError(InfraError):
    """A host file the lab writes or reads (results, cache, scratch) failed it: a full
    disk, a read-only mount, a directory gone. Names the path the lab was working on, which
    is not always the one the OS names (a copy's ENOSPC names its source), and the errno."""

    def __init__(self, path: Path | str, errno: int | None, strerror: str | None) -> None:
        self.path = Path(path)
        self.errno = errno
        self.strerror = strerror
        said = f"[Errno {errno}] {strerror}" if errno is not None else strerror
        super().__init__(f"{self.path}: {said}")


class MissingPrerequisite(InfraError):
    """A host tool or file the lab needs is absent; `fix` is the command that installs it."""

    def __init__(self, what: str, fix: str) -> None:
        self.what = what
        self.fix = fix
        super().__init__(f"{what} is missing; fix: {fix} (see `vfio-lab doctor`)")


class BuildError(InfraError):
    """Building an artifact (kernel, initramfs, root filesystem) failed."""

    def __init__(self, artifact: str, message: str, log_tail: Sequence[str] = ()) -> None:
        self.artifact = artifact
        self.log_tail = list(log_tail)
        tail = "".join(f"\n  | {line}" for line in self.log_tail)
        super().__init__(f"building {artifact} failed: {message}{tail}")


class LaunchError(InfraError):
    """QEMU did not start or died before the guest was ready."""

    def __init__(
        self, message: str, exitcode: int | None, argv: Sequence[str], log_tail: Sequence[str]
    ) -> None:
        self.exitcode = exitcode
        self.argv = list(argv)
        self.log_tail = list(log_tail)
        tail = "".join(f"\n  | {line}" for line in self.log_tail)
        super().__init__(f"{message} (exit code {exitcode}){tail}")


class BootTimeout(InfraError):
    """The guest did not answer over SSH within the deadline."""

    def __init__(self, cell: str, seconds: float, console_tail: Sequence[str]) -> None:
        self.cell = cell
        self.seconds = seconds
        self.console_tail = list(console_tail)
        tail = "".join(f"\n  | {line}" for line in self.console_tail)
        super().__init__(f"cell {cell}: no SSH answer within {seconds:g} s; console tail:{tail}")


class GuestCommandError(InfraError):
    """A lab-side command in the guest (bind, copy, collect) failed."""

    def __init__(self, command: str, status: int, output: str) -> None:
        self.command = command
        self.status = status
        self.output = output
        super().__init__(f"guest command {command!r} exited {status}: {output.strip()[-2000:]}")
