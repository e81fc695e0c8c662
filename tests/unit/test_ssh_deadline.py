"""A guest that stops answering must not hang the lab (a fake transport at the seam)."""

from __future__ import annotations

import threading
import time

import pytest

from lab.vm import ssh
from lab.vm.ssh import GuestSSH, GuestTimeout


class HangingTransport:
    """Like paramiko with a dead guest: open_session waits until the connection closes."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def is_active(self) -> bool:
        return True

    def open_session(self) -> None:
        self.closed.wait()
        raise EOFError("the connection is closed")


class HangingClient:
    def __init__(self) -> None:
        self.transport = HangingTransport()

    def get_transport(self) -> HangingTransport:
        return self.transport

    def close(self) -> None:
        self.transport.closed.set()


def test_run_on_a_dead_guest_times_out(monkeypatch):
    monkeypatch.setattr(ssh, "DEADLINE_GRACE_S", 0.0)
    guest = GuestSSH.__new__(GuestSSH)
    guest.client = HangingClient()  # type: ignore[assignment]
    start = time.monotonic()
    with pytest.raises(GuestTimeout, match=r"'sync' did not finish within 0\.5 s"):
        guest.run("sync", timeout=0.5)
    assert time.monotonic() - start < 5
    assert guest.client is None  # closed: later calls fail fast instead of hanging


class DoneChannel:
    """A command that has exited 0 with no output."""

    def __init__(self) -> None:
        self.status_event = threading.Event()
        self.commands: list[str] = []

    def exec_command(self, command: str) -> None:
        self.commands.append(command)

    def recv_ready(self) -> bool:
        return False

    def recv_stderr_ready(self) -> bool:
        return False

    def recv(self, n: int) -> bytes:
        raise AssertionError("nothing to read")

    recv_stderr = recv

    def exit_status_ready(self) -> bool:
        return True

    def recv_exit_status(self) -> int:
        return 0

    def close(self) -> None:
        pass


class AnsweringTransport:
    def __init__(self) -> None:
        self.channel = DoneChannel()

    def is_active(self) -> bool:
        return True

    def open_session(self) -> DoneChannel:
        return self.channel


class AnsweringClient:
    def __init__(self) -> None:
        self.transport = AnsweringTransport()

    def get_transport(self) -> AnsweringTransport:
        return self.transport

    def close(self) -> None:
        pass


def test_a_guest_that_answers_gives_the_round_trip():
    guest = GuestSSH.__new__(GuestSSH)
    client = AnsweringClient()
    guest.client = client  # type: ignore[assignment]
    seconds = guest.answers(timeout=5)
    assert seconds is not None and 0 <= seconds < 5
    assert client.transport.channel.commands == ["true"]


def test_a_guest_that_does_not_answer_in_time_gives_none_and_drops_the_connection(monkeypatch):
    monkeypatch.setattr(ssh, "DEADLINE_GRACE_S", 0.0)
    guest = GuestSSH.__new__(GuestSSH)
    guest.client = HangingClient()  # type: ignore[assignment]
    start = time.monotonic()
    assert guest.answers(timeout=0.5) is None
    assert time.monotonic() - start < 5 and guest.client is None
    assert guest.answers(timeout=0.5) is None  # not connected any more: no answer, at once
