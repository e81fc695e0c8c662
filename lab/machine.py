"""One QEMU guest's lifecycle: launch -> wait_ready -> (use) -> shutdown, cleanup guaranteed.

Modelled on QEMU's own qemu.machine: QMP for control, a graceful `quit` before a
kill, and launch errors that carry the exit code, the argv and the log tail.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import paramiko
from qemu.qmp.legacy import QEMUMonitorProtocol

from lab import running
from lab.console import read_lines
from lab.errors import BootTimeout, LabError, LaunchError, MissingPrerequisite
from lab.qemu import VMConfig, build_argv
from lab.ssh import GuestSSH, SSHError

TAIL_LINES = 40
SYNC_TIMEOUT_S = 10.0
POLL_ATTEMPT_S = 1.0
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 for the SSH forward."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    return read_lines(path)[-lines:]


def _die_with_parent() -> None:
    # If the lab itself is killed with SIGKILL no finally runs; the kernel then kills QEMU.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Machine:
    """A running guest. Use as a context manager: leaving it always stops QEMU."""

    def __init__(
        self,
        cfg: VMConfig,
        client_key: Path,
        host_pub: Path,
        qemu_log: Path,
        announce_dir: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.announce_dir = announce_dir
        self._announced: Path | None = None
        self.argv = build_argv(cfg)
        self.qemu_log = qemu_log
        self.ssh = GuestSSH(cfg.ssh_port, client_key, host_pub)
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        self.boot_to_ssh_s: float | None = None
        self._started = 0.0

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

    def launch(self) -> None:
        self.qemu_log.parent.mkdir(parents=True, exist_ok=True)
        self._started = time.monotonic()
        with self.qemu_log.open("wb") as log:
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches the lab, which then stops QEMU itself
                    preexec_fn=_die_with_parent,
                )
            except FileNotFoundError:
                raise MissingPrerequisite(self.argv[0], "apt-get install qemu-system-x86") from None
        self._connect_qmp()
        if self.announce_dir is not None:
            self._announced = running.announce(
                self.announce_dir,
                running.RunningVM(
                    id=self.cfg.qmp_socket.parent.name,
                    name=self.cfg.name,
                    pid=self.proc.pid if self.proc else -1,
                    ssh_port=self.cfg.ssh_port,
                    qmp_socket=str(self.cfg.user_qmp_socket or ""),
                    console_log=str(self.cfg.console_log),
                ),
            )

    def _connect_qmp(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive("QEMU exited before its QMP socket was up")
            if self.cfg.qmp_socket.exists():
                qmp = QEMUMonitorProtocol(str(self.cfg.qmp_socket))
                with contextlib.suppress(OSError):
                    qmp.connect()
                    self.qmp = qmp
                    return
            if time.monotonic() > deadline:
                raise self._launch_error(f"no QMP socket after {timeout:g} s")
            time.sleep(0.05)

    def _check_alive(self, message: str) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise self._launch_error(message)

    def _launch_error(self, message: str) -> LaunchError:
        code = self.proc.poll() if self.proc else None
        log = tail(self.qemu_log) + [f"console: {line}" for line in tail(self.cfg.console_log, 15)]
        return LaunchError(message, code, self.argv, log)

    def wait_ready(self, timeout: float) -> float:
        """Block until an SSH command succeeds; returns seconds from launch to SSH."""
        deadline = self._started + timeout
        while True:
            self._check_alive("QEMU exited while the guest was booting")
            with contextlib.suppress(paramiko.SSHException, OSError, EOFError, SSHError):
                # Short attempts: before the guest's network is up, QEMU's forward accepts
                # the TCP connection and the banner never comes; waiting long loses seconds.
                self.ssh.connect(timeout=POLL_ATTEMPT_S)
                if self.ssh.run("true", timeout=10).status == 0:
                    self.boot_to_ssh_s = time.monotonic() - self._started
                    return self.boot_to_ssh_s
                self.ssh.close()
            if time.monotonic() > deadline:
                raise BootTimeout(self.cfg.name, timeout, tail(self.cfg.console_log))
            time.sleep(0.1)

    def exit_status(self, wait: float = 0.0) -> int | None:
        """QEMU's exit code if it has exited (a guest crash, an emulator abort) within `wait`
        seconds, else None."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=wait) if wait else self.proc.poll()
        except subprocess.TimeoutExpired:
            return None

    def _guest_running(self) -> bool:
        """False when the vCPUs are stopped (a debugger attached, a pause): SSH would hang."""
        with contextlib.suppress(Exception):
            status = self.query("query-status")
            return isinstance(status, dict) and status.get("status") == "running"
        return False

    def query(self, command: str) -> object:
        if self.qmp is None:
            raise self._launch_error("QMP is not connected")
        return self.qmp.cmd(command)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Graceful `quit` over QMP, then SIGTERM, then SIGKILL; safe to call twice.

        The guest has no init system to power it off, so a guest still answering SSH is
        asked to `sync` first: what it wrote reaches the overlay (kept with --keep)."""
        if self.ssh.client is not None and self._guest_running():
            with contextlib.suppress(LabError):
                self.ssh.run("sync", timeout=SYNC_TIMEOUT_S)
        self.ssh.close()
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            if self.qmp is not None:
                with contextlib.suppress(Exception):
                    self.qmp.cmd("quit")
            _wait_or_kill(proc, timeout)
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                self.qmp.close()
            self.qmp = None
        self.cfg.qmp_socket.unlink(missing_ok=True)
        if self._announced is not None:
            self._announced.unlink(missing_ok=True)
            self._announced = None


def _wait_or_kill(proc: subprocess.Popen[bytes], timeout: float) -> None:
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout if sig is None else 5.0)
            return
        except subprocess.TimeoutExpired:
            continue
