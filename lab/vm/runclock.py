"""The clock a guest's per-test and stall timeouts run on: the host's, less the time the
host kept QEMU from running.

On a loaded host (a shared CI runner, other lab runs) a guest's threads are runnable but
wait for a CPU; the guest's own clock does not help, since QEMU derives it from the host's
(TCG without -icount, and KVM alike). The kernel counts that wait per thread
(/proc/PID/task/TID/schedstat, its second field), so the clock discounts it: a test that
is slow because the host starved it is not a hang, and a guest that sleeps in a deadlock
(its threads not runnable, so waiting for nothing) still is, on time.

Per interval between two readings, the discount is the longest wait of any one QEMU
thread (the vCPU holding a lock the others spin on, or the main loop that serves the
network and the console), and never more than `1 - 1/max_stretch` of it: a timeout
stretches at most `max_stretch` times, so a guest that hangs on a starved host is still
found to hang.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

MAX_STRETCH = 4.0
PROC = Path("/proc")

Waits = Callable[[], dict[int, float]]


def waited_s(schedstat: str) -> float:
    """Seconds a thread has spent runnable, waiting for a CPU, from its schedstat line
    (`run_ns wait_ns timeslices`)."""
    return int(schedstat.split()[1]) / 1e9


def thread_waits(pid: int | None, proc: Path = PROC) -> dict[int, float]:
    """Each thread of process `pid` and its seconds waited for a CPU so far; nothing for
    a process that is gone or a kernel that does not count (no CONFIG_SCHED_INFO), so the
    clock is then the host's."""
    if pid is None:
        return {}
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return {}
    waits = {}
    for task in tasks:
        try:
            waits[int(task.name)] = waited_s((task / "schedstat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return waits


def _wall() -> float:
    return time.monotonic()


class RunClock:
    """Call it for the time now, in seconds: it runs with the host's monotonic clock
    except while the host keeps the process waiting for a CPU. `held_s` is what it has
    discounted so far."""

    def __init__(
        self, waits: Waits, now: Callable[[], float] = _wall, max_stretch: float = MAX_STRETCH
    ) -> None:
        self._waits = waits
        self._now = now
        self._max_held = 1.0 - 1.0 / max_stretch
        self._last_now = now()
        self._last_waits = waits()
        self.value = self._last_now
        self.held_s = 0.0

    @classmethod
    def of_process(cls, pid: int | None) -> RunClock:
        return cls(lambda: thread_waits(pid))

    def __call__(self) -> float:
        now, waits = self._now(), self._waits()
        interval = max(0.0, now - self._last_now)
        longest = max(
            (w - self._last_waits[tid] for tid, w in waits.items() if tid in self._last_waits),
            default=0.0,
        )
        held = min(max(longest, 0.0), interval * self._max_held)
        self.held_s += held
        self.value += interval - held
        self._last_now, self._last_waits = now, waits
        return self.value
