"""Reading a guest's serial console: line-fed, tolerant, looking for the kernel's own alarms."""

from __future__ import annotations

import re
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


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
