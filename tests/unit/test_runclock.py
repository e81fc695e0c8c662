"""The clock the guest's timeouts run on: the host's, less what the host kept QEMU waiting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab.vm.runclock import RunClock, thread_waits, waited_s


class FakeHost:
    """A monotonic clock and QEMU's threads' cumulative seconds waited, set by the test."""

    def __init__(self, **threads: float) -> None:
        self.now = 100.0
        self.waits = {int(tid[1:]): w for tid, w in threads.items()}

    def clock(self, max_stretch: float = 4.0) -> RunClock:
        return RunClock(lambda: dict(self.waits), now=lambda: self.now, max_stretch=max_stretch)

    def step(self, seconds: float, **waited: float) -> None:
        self.now += seconds
        for tid, w in waited.items():
            self.waits[int(tid[1:])] = self.waits.get(int(tid[1:]), 0.0) + w


def test_it_runs_with_the_hosts_clock_while_nothing_waits():
    host = FakeHost(t1=5.0, t2=7.0)
    clock = host.clock()
    assert clock() == 100.0
    host.step(30)
    assert clock() == 130.0 and clock.held_s == 0.0


def test_it_discounts_the_longest_wait_of_one_thread_not_their_sum():
    """Two vCPU threads each waiting 2 s of the same 10 s held the guest back 2 s, not 4."""
    host = FakeHost(t1=0.0, t2=0.0, t3=0.0)
    clock = host.clock()
    host.step(10, t1=2.0, t2=2.0, t3=0.5)
    assert clock() == pytest.approx(108.0)
    assert clock.held_s == pytest.approx(2.0)


def test_a_thread_seen_for_the_first_time_or_gone_counts_nothing_yet():
    host = FakeHost(t1=0.0)
    clock = host.clock()
    host.step(10, t9=50.0)  # a worker thread born with 50 s behind it: not this interval's
    assert clock() == pytest.approx(110.0)
    del host.waits[1]
    host.step(10, t9=3.0)
    assert clock() == pytest.approx(117.0)


def test_it_never_stops_so_a_hang_on_a_starved_host_is_still_found():
    """Built to fool it: a thread 'waits' more than the interval lasted (counters read at
    different moments) and always; the clock still advances 1/max_stretch of the time."""
    host = FakeHost(t1=0.0)
    clock = host.clock(max_stretch=4.0)
    for _ in range(40):
        host.step(1, t1=1.5)
        clock()
    assert clock() == pytest.approx(110.0)
    host.waits[1] = 0.0  # a counter that went backwards (a reused thread id)
    host.step(4)
    assert clock() == pytest.approx(114.0)


def test_schedstat_gives_the_seconds_waited():
    assert waited_s("1010324 180620000 3\n") == pytest.approx(0.18062)


def test_thread_waits_reads_each_thread_and_skips_the_ones_it_cannot(tmp_path: Path):
    task = tmp_path / "42" / "task"
    for tid, text in (("42", "1 2000000000 3\n"), ("43", "5 500000000 1\n"), ("44", "")):
        (task / tid).mkdir(parents=True)
        if text:
            (task / tid / "schedstat").write_text(text)
    (task / "45").mkdir()
    (task / "45" / "schedstat").write_text("garbage\n")
    assert thread_waits(42, proc=tmp_path) == {42: 2.0, 43: 0.5}
    assert thread_waits(7, proc=tmp_path) == {}  # QEMU is gone
    assert thread_waits(None, proc=tmp_path) == {}


def test_this_hosts_kernel_counts_the_waits_of_a_real_process():
    waits = thread_waits(os.getpid())
    if not Path(f"/proc/{os.getpid()}/schedstat").exists():
        assert waits == {}  # no CONFIG_SCHED_INFO: the clock is then the host's
        return
    assert os.getpid() in waits and all(w >= 0 for w in waits.values())
    clock = RunClock.of_process(os.getpid())
    first = clock()
    assert clock() >= first


def test_the_docs_state_the_stretch_the_clock_allows():
    from lab.vm.runclock import MAX_STRETCH
    from tests.conftest import REPO

    for page in ("scenarios.md", "results.md", "glossary.md"):
        assert f"at most {MAX_STRETCH:g} times" in (REPO / "docs" / page).read_text(), page
