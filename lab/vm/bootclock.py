"""When each stage of a boot began, seen from the host: the console lines that mark them,
timestamped as they arrive.

Line-fed (`BootMarks.feed`), with a thin thread that tails the console file while the
guest boots (`watching`). The stages: the kernel is up when it prints its banner, user
space when it runs the initramfs's /init, and the lab's own /sbin/lab-init says when it
starts sshd (images/rootfs/lab-init).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

MARKS = {
    "kernel": re.compile(r"Linux version \d"),
    "init": re.compile(r"Run /init as init process"),
    "sshd": re.compile(r"vfio-lab: starting sshd"),
}
POLL_S = 0.02


class BootMarks:
    """The host's clock at the first line matching each mark."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    def feed(self, line: str, now: float) -> None:
        for name, pattern in MARKS.items():
            if name not in self.seen and pattern.search(line):
                self.seen[name] = now

    def phases(self, qmp_up: float, started: float, ssh_up: float) -> dict[str, float]:
        """Seconds per boot phase: qemu_start (launch to QMP), firmware+kernel (to /init),
        userspace (to sshd), ssh (to the first command). A mark the console never showed
        merges its phase into the next."""
        points = [("qemu_start", qmp_up)]
        points += [
            (phase, self.seen[mark])
            for phase, mark in (("firmware+kernel", "init"), ("userspace", "sshd"))
            if mark in self.seen
        ]
        points.append(("ssh", ssh_up))
        out, last = {}, started
        for phase, at in points:
            out[phase] = round(max(at - last, 0.0), 2)
            last = max(at, last)
        return out


@contextlib.contextmanager
def watching(console_log: Path) -> Iterator[BootMarks]:
    """Tail `console_log` into a BootMarks until the block ends."""
    marks = BootMarks()
    done = threading.Event()

    def tail() -> None:
        offset, partial = 0, ""
        while not done.is_set() and len(marks.seen) < len(MARKS):
            with contextlib.suppress(OSError), console_log.open("rb") as f:
                f.seek(offset)
                data = f.read()
                offset += len(data)
                *lines, partial = (partial + data.decode(errors="replace")).split("\n")
                now = time.monotonic()
                for line in lines:
                    marks.feed(line, now)
            done.wait(POLL_S)

    thread = threading.Thread(target=tail, name="boot-clock", daemon=True)
    thread.start()
    try:
        yield marks
    finally:
        done.set()
        thread.join()
