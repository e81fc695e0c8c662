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
