"""SSH into a lab guest with paramiko: the lab's key, the guest's pinned host key."""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import select
import shlex
import shutil
import signal
import socket
import stat
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import paramiko

from lab.core.errors import GuestCommandError, InfraError

SKIP_NAMES = ("__pycache__", ".pytest_cache")
# While a guest boots, QEMU's forward accepts and resets connections; paramiko's transport
# thread would print each reset as a traceback. Failures still surface as exceptions.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 for the SSH forward."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class CommandResult:
    status: int
    stdout: str
    stderr: str


class SSHError(InfraError):
    """The SSH connection failed or dropped (often: the guest died)."""

    def __init__(self, action: str, cause: BaseException) -> None:
        self.action = action
        self.cause = cause
        super().__init__(f"SSH {action} failed: {type(cause).__name__}: {cause}")


@contextlib.contextmanager
def _translate(action: str) -> Iterator[None]:
    try:
        yield
    except (paramiko.SSHException, OSError, EOFError) as e:
        raise SSHError(action, e) from e


class GuestStalled(InfraError):
    """A watcher gave up on the guest while a command ran (see console.ConsoleWatch)."""

    def __init__(self, command: str, reason: str) -> None:
        self.command = command
        self.reason = reason
        super().__init__(f"guest command {command!r} abandoned: {reason}")


class GuestTimeout(InfraError):
    def __init__(self, command: str, seconds: float) -> None:
        self.command = command
        self.seconds = seconds
        super().__init__(f"guest command {command!r} did not finish within {seconds:g} s")


def load_host_key(pub: Path) -> paramiko.PKey:
    kind, data = pub.read_text().split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(data))


TRANSFER_TIMEOUT_S = 300.0
WATCH_INTERVAL_S = 1.0


class Watch(Protocol):
    """Told of every output; asked now and then whether to give up (a reason) or not."""

    def progress(self) -> None: ...

    def verdict(self) -> str | None: ...


DEADLINE_GRACE_S = 5.0  # the command's own timeout speaks first; the watchdog is the backstop


class GuestSSH:
    """One SSH connection to a guest; `connect` raises on any failure so callers can retry."""

    def __init__(
        self, port: int, client_key: Path, host_pub: Path, host: str = "127.0.0.1"
    ) -> None:
        self.host = host
        self.port = port
        self.client_key = client_key
        self.host_key = load_host_key(host_pub)
        self.client: paramiko.SSHClient | None = None

    def connect(self, timeout: float = 5.0) -> None:
        client = paramiko.SSHClient()
        client.get_host_keys().add(
            f"[{self.host}]:{self.port}", self.host_key.get_name(), self.host_key
        )
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                self.host,
                port=self.port,
                username="root",
                key_filename=str(self.client_key),
                look_for_keys=False,
                allow_agent=False,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
            )
        except BaseException:
            client.close()
            raise
        self.client = client

    @contextlib.contextmanager
    def _deadline(self, seconds: float, what: str) -> Iterator[None]:
        """paramiko waits without limit on a channel a dead guest never answers (the
        channel open, exec_command): past `seconds`, close the connection, which wakes
        every such wait, and report a GuestTimeout."""
        fired = threading.Event()
        client = self.client

        def expire() -> None:
            fired.set()
            if client is not None:
                client.close()

        timer = threading.Timer(seconds, expire)
        timer.daemon = True
        timer.start()
        try:
            yield
        except (SSHError, paramiko.SSHException, OSError, EOFError):
            if fired.is_set():
                self.client = None
                raise GuestTimeout(what, seconds) from None
            raise
        finally:
            timer.cancel()

    @contextlib.contextmanager
    def _sftp(self, what: str) -> Iterator[paramiko.SFTPClient]:
        """An SFTP session under a transfer deadline, its failures as SSHError."""
        with (
            self._deadline(TRANSFER_TIMEOUT_S, what),
            _translate(what),
            contextlib.closing(self._client().open_sftp()) as sftp,
        ):
            yield sftp

    def _client(self) -> paramiko.SSHClient:
        if self.client is None:
            raise InfraError("SSH is not connected")
        return self.client

    def run(
        self,
        command: str | Sequence[str],
        timeout: float = 60.0,
        on_output: Callable[[str], None] | None = None,
        on_stderr: Callable[[str], None] | None = None,
        watch: Watch | None = None,
    ) -> CommandResult:
        """Run a command; `on_output`/`on_stderr` see the streams as they arrive (live logs)."""
        text = command if isinstance(command, str) else shlex.join(command)
        with self._deadline(timeout + DEADLINE_GRACE_S, text), _translate(f"run {text!r}"):
            transport = self._client().get_transport()
            if transport is None or not transport.is_active():
                raise EOFError("the connection is closed")
            chan = transport.open_session()
            try:
                chan.exec_command(text)
                return _collect(chan, text, timeout, on_output, on_stderr, watch)
            finally:
                chan.close()

    def answers(self, timeout: float) -> float | None:
        """Seconds a trivial command took to come back, or None when it did not within
        `timeout` or the connection failed: whether the guest's network and sshd still
        serve. A command on a channel of its own, so it can run beside a long one; when it
        times out, the connection is closed (see `_deadline`), which a dead network
        warrants anyway."""
        started = time.monotonic()
        try:
            self.run("true", timeout=timeout)
        except InfraError:
            return None
        return time.monotonic() - started

    def interactive(self) -> int:
        """A login shell on a real pty, bridged to this terminal; returns the shell's status."""
        with _translate("interactive shell"):
            transport = self._client().get_transport()
            assert transport is not None
            chan = transport.open_session()
            cols, rows = shutil.get_terminal_size()
            chan.get_pty(term=os.environ.get("TERM", "xterm"), width=cols, height=rows)
            chan.invoke_shell()
            try:
                _bridge(chan, sys.stdin.fileno(), sys.stdout.fileno())
                return chan.recv_exit_status()
            finally:
                chan.close()

    def check(self, command: str | Sequence[str], timeout: float = 60.0) -> str:
        result = self.run(command, timeout)
        if result.status != 0:
            text = command if isinstance(command, str) else shlex.join(command)
            raise GuestCommandError(text, result.status, result.stdout + result.stderr)
        return result.stdout

    def put_tree(self, local: Path, remote: str) -> int:
        """Copy a directory tree over SFTP; returns the number of files copied."""
        count = 0
        with self._sftp(f"copy {local}") as sftp:
            for path in sorted(local.rglob("*")):
                rel = path.relative_to(local)
                if any(part in SKIP_NAMES for part in rel.parts) or path.suffix == ".pyc":
                    continue
                target = f"{remote}/{rel.as_posix()}"
                if path.is_dir():
                    sftp.mkdir(target)
                else:
                    sftp.put(str(path), target)
                    sftp.chmod(target, stat.S_IMODE(path.stat().st_mode))
                    count += 1
        return count

    def put_file(self, local: Path, remote: str) -> None:
        with self._sftp(f"copy {local}") as sftp:
            sftp.put(str(local), remote)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def _bridge(chan: paramiko.Channel, in_fd: int, out_fd: int) -> None:
    """Copy bytes both ways until the remote side ends; the local tty is raw meanwhile, so
    Ctrl-C and friends reach the guest's shell instead of the lab."""
    saved = termios.tcgetattr(in_fd) if os.isatty(in_fd) else None
    resize = signal.getsignal(signal.SIGWINCH)
    signal.signal(signal.SIGWINCH, lambda *_: chan.resize_pty(*shutil.get_terminal_size()))
    readers: list[Any] = [chan, in_fd]
    try:
        if saved is not None:
            tty.setraw(in_fd)
        while True:
            ready, _, _ = select.select(readers, [], [])
            if chan in ready:
                data = chan.recv(65536)
                if not data:
                    return
                os.write(out_fd, data)
            if in_fd in ready:
                data = os.read(in_fd, 4096)
                if data:
                    chan.sendall(data)
                else:
                    chan.shutdown_write()
                    readers.remove(in_fd)
    finally:
        signal.signal(signal.SIGWINCH, resize)
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)


def _collect(
    chan: paramiko.Channel,
    text: str,
    timeout: float,
    on_output: Callable[[str], None] | None,
    on_stderr: Callable[[str], None] | None,
    watch: Watch | None = None,
) -> CommandResult:
    out: list[bytes] = []
    err: list[bytes] = []
    deadline = time.monotonic() + timeout
    next_check = time.monotonic()
    while True:
        got = False
        for ready, recv, sink, tell in (
            (chan.recv_ready, chan.recv, out, on_output),
            (chan.recv_stderr_ready, chan.recv_stderr, err, on_stderr),
        ):
            if ready():
                data = recv(65536)
                sink.append(data)
                got = True
                if tell is not None:
                    tell(data.decode(errors="replace"))
                if watch is not None:
                    watch.progress()
        if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
            break
        if time.monotonic() > deadline:
            raise GuestTimeout(text, timeout)
        if watch is not None and time.monotonic() >= next_check:
            next_check = time.monotonic() + WATCH_INTERVAL_S
            if reason := watch.verdict():
                raise GuestStalled(text, reason)
        if not got:
            # Wakes early when the command exits; new output is picked up on the next turn.
            chan.status_event.wait(0.05)
    return CommandResult(
        chan.recv_exit_status(),
        b"".join(out).decode(errors="replace"),
        b"".join(err).decode(errors="replace"),
    )
