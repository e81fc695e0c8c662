"""Reading a guest's serial console: line-fed, tolerant, looking for the kernel's own alarms."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
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


# The guest's network is gone: SSH to it will never answer again.
NETWORK_DEAD = re.compile(r"NETDEV WATCHDOG: .*")
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


class ConsoleWatch:
    """Reads a growing console log as it is written and says when to give up on the guest:
    the kernel panicked, a test ran past `test_s`, the network died, or neither the console
    nor SSH showed any progress for `stall_s`. It follows the payload's test markers, so
    it knows which test was running."""

    def __init__(self, path: Path, stall_s: float, test_s: float = float("inf")) -> None:
        self.path = path
        self.stall_s = stall_s
        self.test_s = test_s
        self.offset = 0
        self.last_progress = time.monotonic()
        self.running: str | None = None
        self.test_started = 0.0
        self.stop: Stop | None = None
        self._partial = b""

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def verdict(self) -> str | None:
        if self.stop is None:
            self.stop = self._check()
        return self.stop.message if self.stop else None

    def _check(self) -> Stop | None:
        for line in self._new_lines():
            if stop := self._line(line):
                return stop
        now = time.monotonic()
        if self.running and now - self.test_started > self.test_s:
            return Stop(
                "hang",
                f"{self.running} still running after the per-test timeout of {self.test_s:g} s",
                self.running,
            )
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

    def _line(self, line: str) -> Stop | None:
        if m := MARKER.search(line):
            started = m.group("what") == "start"
            self.running = m.group("name") if started else None
            self.test_started = time.monotonic()
        elif m := PANIC.search(line):
            return Stop("panic", m.group(0).strip(), self.running)
        elif m := NETWORK_DEAD.search(line):
            return Stop(
                "network", f"the guest's network stalled ({m.group(0).strip()})", self.running
            )
        return None


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
