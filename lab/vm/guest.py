"""A booted guest: its QEMU `Machine` and the SSH connection the lab talks to it over.

The guest has no init system to power it off, so a guest whose disk is kept is asked
to `sync` before QEMU quits; a throwaway overlay is not worth the wait.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import paramiko

from lab.core.errors import BootTimeout, LabError
from lab.vm import bootclock
from lab.vm.machine import Machine, tail
from lab.vm.ssh import GuestSSH, SSHError

SYNC_TIMEOUT_S = 10.0
POLL_ATTEMPT_S = 1.0


class Guest:
    """Use as a context manager around a launched Machine: leaving it closes SSH and stops
    QEMU, whatever happened."""

    def __init__(
        self, name: str, machine: Machine, ssh: GuestSSH, sync_on_exit: bool, disk: Path
    ) -> None:
        self.name = name
        self.disk = disk  # the overlay it runs on
        self.machine = machine
        self.ssh = ssh
        self.sync_on_exit = sync_on_exit
        self.boot_to_ssh_s: float | None = None

    def __enter__(self) -> Guest:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_ready(self, timeout: float, sshd_started: Callable[[], bool] = lambda: True) -> float:
        """Block until an SSH command succeeds; returns seconds from QEMU's start to SSH.

        No attempt before `sshd_started()` (a booting guest's console says so): one made
        before the guest's network is up hangs in QEMU's forward, which accepts the TCP
        connection while the banner never comes, for all of POLL_ATTEMPT_S. Once the
        network is up, an attempt before sshd listens is refused at once."""
        deadline = self.machine.started + timeout
        while True:
            self.machine.check_alive("QEMU exited while the guest was booting")
            started = sshd_started()
            if started:
                with contextlib.suppress(paramiko.SSHException, OSError, EOFError, SSHError):
                    self.ssh.connect(timeout=POLL_ATTEMPT_S)
                    if self.ssh.run("true", timeout=10).status == 0:
                        self.boot_to_ssh_s = time.monotonic() - self.machine.started
                        return self.boot_to_ssh_s
                    self.ssh.close()
            if time.monotonic() > deadline:
                raise BootTimeout(self.name, timeout, tail(self.machine.console_log))
            time.sleep(0.1 if started else bootclock.POLL_S)  # as the boot clock tails

    def abandon(self) -> None:
        """A hung or dying guest: no `sync`, no more SSH; QEMU is killed when the guest stops."""
        self.sync_on_exit = False
        self.ssh.close()

    def stop(self, timeout: float = 10.0) -> None:
        try:
            if self.sync_on_exit and self.ssh.client is not None and self.machine.running():
                with contextlib.suppress(LabError):
                    self.ssh.run("sync", timeout=SYNC_TIMEOUT_S)
            self.ssh.close()
        finally:
            self.machine.shutdown(timeout)
