"""Reading a guest's serial console: line-fed, tolerant, looking for the kernel's own alarms."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# The kernel's words for "something went badly wrong", by kind, most severe first.
KERNEL_CRASHES = {
    "panic": re.compile(r"Kernel panic - not syncing:.*"),
    "bug": re.compile(r"BUG: .*"),
    "oops": re.compile(r"Oops: .*"),
    "gpf": re.compile(r"general protection fault.*"),
    "warning": re.compile(r"WARNING: CPU: .*"),
}
CRASH_PATTERNS = tuple(KERNEL_CRASHES.values())


def crash_lines(lines: list[str]) -> list[str]:
    """The first line matching each crash pattern, in pattern order (panic first)."""
    found = []
    for pattern in CRASH_PATTERNS:
        match = next((m.group(0) for line in lines if (m := pattern.search(line))), None)
        if match is not None:
            found.append(match.strip())
    return found


# A transmit queue of the guest's network made no progress for seconds: on a loaded host
# it recovers, so it is only a suspect until SSH fails to answer (ConsoleWatch.answers).
NETWORK_STALLED = re.compile(r"NETDEV WATCHDOG: .*")
PANIC = KERNEL_CRASHES["panic"]
# The payload's /dev/kmsg markers (guest_tests/tap_report.py) around every test.
MARKER = re.compile(r"vfio-lab: test-(?P<what>start|end) (?P<name>\S+)")

# Why the watch gave up. `panic` and `hang` are the running test's story (an error of
# that test); `network` and `stall` are the infrastructure's (the cell may be retried).
TEST_STOPS = ("panic", "hang")


@dataclass(frozen=True)
class Stop:
    kind: str  # panic | hang | network | stall
    message: str
    test: str | None  # the test running when it happened, by the console's markers


def _wall() -> float:
    return time.monotonic()


def _no_answer() -> float | None:
    return None


@dataclass
class ConsoleWatch:
    """Reads a growing console log as it is written and says when to give up on the guest:
    the kernel panicked, a test ran past `test_s`, the network died, or neither the console
    nor SSH showed any progress for `stall_s`. It follows the payload's test markers, so
    it knows which test was running.

    Both timeouts run on `clock` (the lab's: runclock.RunClock, which does not count the
    time the host kept QEMU from running). A stalled transmit queue (`NETDEV WATCHDOG`)
    asks `answers` whether SSH still answers (its round trip in seconds, or None): if it
    does, the guest goes on and the alarm is kept in `warnings`; if not, the network died."""

    path: Path
    stall_s: float
    test_s: float = float("inf")
    clock: Callable[[], float] = _wall
    answers: Callable[[], float | None] = _no_answer
    offset: int = 0
    running: str | None = None
    test_started: float = 0.0  # on `clock`
    test_started_wall: float = 0.0  # on the host's clock, to say what the discount was
    stop: Stop | None = None
    warnings: list[str] = field(default_factory=list)
    last_progress: float = field(init=False)
    _partial: bytes = b""

    def __post_init__(self) -> None:
        self.last_progress = self.clock()

    def progress(self) -> None:
        self.last_progress = self.clock()

    def verdict(self) -> str | None:
        if self.stop is None:
            self.stop = self._check()
        return self.stop.message if self.stop else None

    def _check(self) -> Stop | None:
        for line in self._new_lines():
            if stop := self._line(line):
                return stop
        now = self.clock()
        if self.running and now - self.test_started > self.test_s:
            return Stop("hang", self._hang_message(now), self.running)
        if now - self.last_progress > self.stall_s:
            return Stop(
                "stall", f"no progress on the console or over SSH for {self.stall_s:g} s", None
            )
        return None

    def _new_lines(self) -> list[str]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                new = f.read()
        except FileNotFoundError:
            return []
        if not new:
            return []
        self.offset += len(new)
        self.progress()
        *lines, self._partial = (self._partial + new).split(b"\n")
        return [line.decode(errors="replace") for line in lines]

    def _hang_message(self, now: float) -> str:
        """The timeout, and how long the test really took when the host held QEMU back."""
        message = f"{self.running} still running after the per-test timeout of {self.test_s:g} s"
        wall = time.monotonic() - self.test_started_wall
        held = wall - (now - self.test_started)
        if held >= 1.0:
            message += (
                f" of running time ({wall:.0f} s on the host's clock, {held:.0f} s of which"
                " the host kept QEMU waiting for a CPU)"
            )
        return message

    def _line(self, line: str) -> Stop | None:
        if m := MARKER.search(line):
            started = m.group("what") == "start"
            self.running = m.group("name") if started else None
            self.test_started = self.clock()
            self.test_started_wall = time.monotonic()
        elif m := PANIC.search(line):
            return Stop("panic", m.group(0).strip(), self.running)
        elif m := NETWORK_STALLED.search(line):
            return self._network_stalled(m.group(0).strip())
        return None

    def _network_stalled(self, alarm: str) -> Stop | None:
        """Dead only if SSH no longer answers; otherwise a warning that stays with the cell."""
        round_trip = self.answers()
        if round_trip is None:
            return Stop(
                "network",
                f"the guest's network stalled ({alarm}) and SSH no longer answered",
                self.running,
            )
        during = f" during {self.running}" if self.running else ""
        self.warnings.append(
            f"{alarm}{during}; SSH still answered (in {round_trip:.1f} s), so the guest went on"
        )
        return None


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
