"""One QEMU process and its QMP monitor: launch -> (use) -> shutdown, cleanup guaranteed.

Modelled on QEMU's own python/qemu/machine: QMP for control, a graceful `quit`
before SIGTERM and SIGKILL, launch errors that carry the exit code, the argv and
the log tail, and a shutdown that says when QEMU ended abnormally. It knows nothing
of SSH or of the guest: see `guest.Guest`.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from lab.core.errors import LaunchError, MissingPrerequisite
from lab.core.files import HostFile, make_dir
from lab.core.proc import die_with_lab
from lab.vm.console import read_lines

TAIL_LINES = 40
QMP_CONNECT_S = 30.0
KILL_WAIT_S = 5.0


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    return read_lines(path)[-lines:]


class Machine:
    """A QEMU process. Use as a context manager: leaving it always stops QEMU."""

    def __init__(
        self,
        argv: Sequence[str],
        qmp_socket: Path,
        qemu_log: Path,
        console_log: Path,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.argv = list(argv)
        self.pass_fds = tuple(pass_fds)  # descriptors QEMU inherits (a snapshot to load)
        self.qmp_socket = qmp_socket
        self.qemu_log = qemu_log
        self.console_log = console_log
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        self.started = 0.0
        self.qmp_up = 0.0  # when QMP answered (time.monotonic, as `started`)
        self.abnormal: str | None = None  # how QEMU ended, when not by our `quit`

    def __enter__(self) -> Machine:
        try:
            self.launch()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def launch(self) -> None:
        make_dir(self.qemu_log.parent)
        self.started = time.monotonic()
        with HostFile(self.qemu_log, "wb") as log:
            try:
                self.proc = subprocess.Popen(
                    [*die_with_lab(), *self.argv],
                    stdin=subprocess.DEVNULL,
                    stdout=log.fileno(),
                    stderr=subprocess.STDOUT,
                    pass_fds=self.pass_fds,
                    start_new_session=True,  # Ctrl-C reaches the lab, which then stops QEMU itself
                )
            except FileNotFoundError:
                raise MissingPrerequisite("setpriv", "apt-get install util-linux") from None
        self._connect_qmp()

    def _connect_qmp(self) -> None:
        deadline = time.monotonic() + QMP_CONNECT_S
        while True:
            self.check_alive("QEMU exited before its QMP socket was up")
            if self.qmp_socket.exists():
                qmp = QEMUMonitorProtocol(str(self.qmp_socket))
                # The socket file can exist a moment before QEMU listens on it.
                with contextlib.suppress(OSError, QMPError):
                    qmp.connect()
                    self.qmp = qmp
                    self.qmp_up = time.monotonic()
                    return
            if time.monotonic() > deadline:
                raise self.launch_error(f"no QMP socket after {QMP_CONNECT_S:g} s")
            time.sleep(0.05)

    def check_alive(self, message: str) -> None:
        """LaunchError with `message` if QEMU has exited."""
        if self.proc is None or self.proc.poll() is not None:
            raise self.launch_error(message)

    def launch_error(self, message: str) -> LaunchError:
        code = self.proc.poll() if self.proc else None
        log = tail(self.qemu_log) + [f"console: {line}" for line in tail(self.console_log, 15)]
        return LaunchError(message, code, self.argv, log)

    def exit_status(self, wait: float = 0.0) -> int | None:
        """QEMU's exit code if it has exited (a guest crash, an emulator abort) within `wait`
        seconds, else None."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=wait) if wait else self.proc.poll()
        except subprocess.TimeoutExpired:
            return None

    def query(self, command: str, **args: object) -> object:
        if self.qmp is None:
            raise self.launch_error("QMP is not connected")
        return self.qmp.cmd(command, **args)

    def send_fd(self, fd: int, name: str) -> None:
        """Hand QEMU a descriptor (SCM_RIGHTS on the QMP socket), known to it as `name`."""
        if self.qmp is None:
            raise self.launch_error("QMP is not connected")
        self.qmp.send_fd_scm(fd)
        self.qmp.cmd("getfd", fdname=name)

    def running(self) -> bool:
        """False when the vCPUs are stopped (a debugger attached, a pause) or QEMU is gone."""
        with contextlib.suppress(Exception):
            status = self.query("query-status")
            return isinstance(status, dict) and status.get("status") == "running"
        return False

    def shutdown(self, timeout: float = 10.0) -> None:
        """Graceful `quit` over QMP, then SIGTERM, then SIGKILL; safe to call twice.

        A QEMU that had already exited, or needed signals to stop, is recorded in
        `abnormal`. An interrupt while waiting (a second Ctrl-C) kills QEMU at once."""
        proc, self.proc = self.proc, None
        try:
            if proc is not None:
                self._stop(proc, timeout)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            self._close_qmp()
            self.qmp_socket.unlink(missing_ok=True)

    def _stop(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        code = proc.poll()
        if code is not None:
            self.abnormal = f"QEMU had exited on its own (exit code {code})"
            return
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                self.qmp.cmd("quit")
        how = wait_or_kill(proc, timeout)
        if how is not None:
            self.abnormal = f"QEMU did not quit within {timeout:g} s; stopped with {how}"
        elif proc.returncode != 0:
            self.abnormal = f"QEMU exited with code {proc.returncode} after quit"

    def _close_qmp(self) -> None:
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                self.qmp.close()
            self.qmp = None


def wait_or_kill(proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    """Wait `timeout` for `proc` to end, then SIGTERM, then SIGKILL. Returns the signal's name
    it took, or None if it ended by itself."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout if sig is None else KILL_WAIT_S)
            return None if sig is None else sig.name
        except subprocess.TimeoutExpired:
            continue
    return "SIGKILL"
