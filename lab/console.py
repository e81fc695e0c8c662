"""Reading a guest's serial console: line-fed, tolerant, looking for the kernel's own alarms."""

from __future__ import annotations

import re
import time
from pathlib import Path

# The kernel's words for "something went badly wrong", most severe first.
CRASH_PATTERNS = (
    re.compile(r"Kernel panic - not syncing:.*"),
    re.compile(r"BUG: .*"),
    re.compile(r"Oops: .*"),
    re.compile(r"general protection fault.*"),
    re.compile(r"WARNING: CPU: .*"),
)


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


class ConsoleWatch:
    """Reads a growing console log as it is written and says when to give up on the guest:
    its network died, or neither the console nor SSH showed any progress for `stall_s`."""

    def __init__(self, path: Path, stall_s: float) -> None:
        self.path = path
        self.stall_s = stall_s
        self.offset = 0
        self.last_progress = time.monotonic()

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def verdict(self) -> str | None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                new = f.read()
        except FileNotFoundError:
            new = b""
        if new:
            self.offset += len(new)
            self.progress()
            if m := NETWORK_DEAD.search(new.decode(errors="replace")):
                return f"the guest's network stalled ({m.group(0).strip()})"
        if time.monotonic() - self.last_progress > self.stall_s:
            return f"no progress on the console or over SSH for {self.stall_s:g} s"
        return None


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
