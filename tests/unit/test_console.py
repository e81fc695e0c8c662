from __future__ import annotations

from lab.run.cell import crash_report
from lab.vm.console import crash_lines, read_lines

CONSOLE = """\
[    8.59] sysrq: Trigger a crash
[    8.59] Kernel panic - not syncing: sysrq triggered crash
[    8.60] CPU: 1 PID: 345 Comm: python3 Not tainted 6.1.0-56-amd64 #1  Debian 6.1.192-2
\x00\xff garbage from a dying UART
[    8.60]  write_sysrq_trigger+0x24/0x40
"""


def test_crash_lines_put_the_panic_first():
    lines = [
        *CONSOLE.splitlines(),
        "[ 1.0] WARNING: CPU: 0 PID: 1 at drivers/iommu/x.c:12 f+0x1/0x2",
    ]
    assert crash_lines(lines) == [
        "Kernel panic - not syncing: sysrq triggered crash",
        "WARNING: CPU: 0 PID: 1 at drivers/iommu/x.c:12 f+0x1/0x2",
    ]


def test_clean_console_has_no_crash():
    assert crash_lines(["[ 0.1] Linux version 6.1", "Server listening on :: port 22."]) == []


def test_crash_report_names_the_panic_and_keeps_the_tail(tmp_path):
    log = tmp_path / "console.log"
    log.write_text(CONSOLE)
    report = crash_report(0, read_lines(log))
    assert report.startswith("QEMU exited during the payload (exit code 0)")
    assert "! Kernel panic - not syncing: sysrq triggered crash" in report
    assert report.rstrip().endswith("write_sysrq_trigger+0x24/0x40")
    assert crash_report(0, read_lines(tmp_path / "missing.log")).endswith("console tail:")


STALLED_QUEUE = (
    "[ 38.0] virtio_net virtio1 eth0: NETDEV WATCHDOG: CPU: 0: transmit queue 0 timed out 10156 ms"
)
ALARM = "NETDEV WATCHDOG: CPU: 0: transmit queue 0 timed out 10156 ms"


class Probe:
    """SSH's answer to the watch's question, counted: seconds, or None for no answer."""

    def __init__(self, answer: float | None) -> None:
        self.answer = answer
        self.asked = 0

    def __call__(self) -> float | None:
        self.asked += 1
        return self.answer


def test_console_watch_gives_up_on_a_network_ssh_no_longer_answers(tmp_path):
    from lab.vm.console import ConsoleWatch, Stop

    log = tmp_path / "console.log"
    log.write_text("[ 1.0] vfio-lab: test-start a\n")
    probe = Probe(None)
    watch = ConsoleWatch(log, stall_s=60, answers=probe)
    assert watch.verdict() is None and probe.asked == 0
    with log.open("a") as f:
        f.write(STALLED_QUEUE + "\n")
    message = f"the guest's network stalled ({ALARM}) and SSH no longer answered"
    assert watch.verdict() == message
    assert watch.stop == Stop("network", message, "a") and probe.asked == 1
    assert watch.warnings == []


def test_a_stalled_queue_ssh_survives_is_a_warning_and_the_watch_goes_on(tmp_path):
    """Issue 21: a loaded host stalls virtio-net's transmit queue for seconds and it
    recovers; the cell must not be abandoned for it, nor the alarm dropped."""
    from lab.vm.console import ConsoleWatch, Stop

    log = tmp_path / "console.log"
    log.write_text("[ 1.0] vfio-lab: test-start m.hugetlb_1gb\n" + STALLED_QUEUE + "\n")
    probe = Probe(0.42)
    watch = ConsoleWatch(log, stall_s=60, answers=probe)
    assert watch.verdict() is None and watch.stop is None and probe.asked == 1
    assert watch.warnings == [
        f"{ALARM} during m.hugetlb_1gb; SSH still answered (in 0.4 s), so the guest went on"
    ]
    # Still watching: the next alarm is judged on its own, and a panic still stops it.
    with log.open("a") as f:
        f.write("[ 40.0] vfio-lab: test-end m.hugetlb_1gb pass\n" + STALLED_QUEUE + "\n")
        f.write("[ 41.0] vfio-lab: test-start m.next\n")
        f.write("[ 42.0] Kernel panic - not syncing: sysrq triggered crash\n")
    assert watch.verdict() == "Kernel panic - not syncing: sysrq triggered crash"
    assert watch.stop == Stop("panic", watch.stop.message, "m.next") and probe.asked == 2
    assert len(watch.warnings) == 2 and "during" not in watch.warnings[1]


def test_console_watch_gives_up_without_progress(tmp_path, monkeypatch):
    from lab.vm import console

    now = [1000.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: now[0])
    watch = console.ConsoleWatch(tmp_path / "missing.log", stall_s=30)
    now[0] += 29
    assert watch.verdict() is None
    watch.progress()  # output over SSH counts as progress
    now[0] += 29
    assert watch.verdict() is None
    now[0] += 2
    assert watch.verdict() == "no progress on the console or over SSH for 30 s"


def test_console_watch_stops_at_a_panic_naming_the_running_test(tmp_path):
    from lab.vm.console import ConsoleWatch, Stop

    log = tmp_path / "console.log"
    log.write_text("[ 1.0] vfio-lab: test-start m.a\n[ 1.1] vfio-lab: test-end m.a pass\n")
    watch = ConsoleWatch(log, stall_s=60, test_s=60)
    assert watch.verdict() is None and watch.running is None
    with log.open("a") as f:
        f.write("[ 2.0] vfio-lab: test-start m.crash\n[ 2.1] Kernel panic - not syn")
    assert watch.verdict() is None and watch.running == "m.crash"  # half a line waits
    with log.open("a") as f:
        f.write("cing: sysrq triggered crash\n")
    assert watch.verdict() == "Kernel panic - not syncing: sysrq triggered crash"
    assert watch.stop == Stop(
        "panic", "Kernel panic - not syncing: sysrq triggered crash", "m.crash"
    )


def test_console_watch_gives_a_test_its_timeout_from_its_start_marker(tmp_path, monkeypatch):
    from lab.vm import console

    now = [1000.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: now[0])
    log = tmp_path / "console.log"
    log.write_text("[ 1.0] vfio-lab: test-start m.slow\n")
    watch = console.ConsoleWatch(log, stall_s=300, test_s=10)
    assert watch.verdict() is None
    now[0] += 9
    watch.progress()
    assert watch.verdict() is None
    now[0] += 2
    assert watch.verdict() == "m.slow still running after the per-test timeout of 10 s"
    assert watch.stop is not None and (watch.stop.kind, watch.stop.test) == ("hang", "m.slow")


class HostWaits:
    """QEMU's threads' seconds waited for a CPU, as the test sets them."""

    def __init__(self) -> None:
        self.by_thread = {1: 0.0, 2: 0.0}

    def __call__(self) -> dict[int, float]:
        return dict(self.by_thread)


def starved_watch(tmp_path, monkeypatch, test_s: float):
    """A watch on the lab's clock over a fake host: (watch, advance(wall, waited))."""
    from lab.vm import console
    from lab.vm.runclock import RunClock

    now = [1000.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: now[0])
    waits = HostWaits()
    clock = RunClock(waits, now=lambda: now[0])
    log = tmp_path / "console.log"
    log.write_text("[ 1.0] vfio-lab: test-start m.hugetlb_1gb\n")
    watch = console.ConsoleWatch(log, stall_s=300, test_s=test_s, clock=clock)
    assert watch.verdict() is None

    def advance(wall: float, waited: float) -> None:
        """`wall` seconds pass, in steps of one, the vCPU thread waiting `waited` of them."""
        for _ in range(int(wall)):
            now[0] += 1
            waits.by_thread[2] += waited / wall
            clock()  # read once a second, as the watch's checks during a command do

    return watch, advance


def test_a_test_slow_because_the_host_starved_qemu_is_no_hang(tmp_path, monkeypatch):
    """Issue 21: under a CPU hog the seed test ran past 120 s of the host's clock while
    QEMU waited for CPUs; only the guest's running time counts against its timeout."""
    watch, advance = starved_watch(tmp_path, monkeypatch, test_s=120)
    advance(200, waited=150)  # 50 s of running time
    assert watch.verdict() is None
    advance(60, waited=0)  # 110 s
    assert watch.verdict() is None
    advance(11, waited=0)  # 121 s: now it is a hang, and says what the host took
    assert watch.verdict() == (
        "m.hugetlb_1gb still running after the per-test timeout of 120 s of running time"
        " (271 s on the host's clock, 150 s of which the host kept QEMU waiting for a CPU)"
    )
    assert watch.stop is not None and watch.stop.kind == "hang"


def test_a_hang_on_a_host_that_never_lets_qemu_run_is_still_found(tmp_path, monkeypatch):
    """Built to fool the clock: QEMU waits all the time. The timeout stretches at most
    MAX_STRETCH times, so the hang is still told, as a hang of that test."""
    from lab.vm.runclock import MAX_STRETCH

    watch, advance = starved_watch(tmp_path, monkeypatch, test_s=10)
    advance(10 * MAX_STRETCH - 1, waited=10 * MAX_STRETCH - 1)
    assert watch.verdict() is None
    advance(2, waited=2)
    assert watch.verdict() is not None
    assert watch.stop is not None and (watch.stop.kind, watch.stop.test) == (
        "hang",
        "m.hugetlb_1gb",
    )
    assert "(41 s on the host's clock, 31 s of which the host kept QEMU waiting" in (
        watch.stop.message
    )


def test_a_hang_on_an_idle_host_is_told_on_the_hosts_clock(tmp_path, monkeypatch):
    watch, advance = starved_watch(tmp_path, monkeypatch, test_s=10)
    advance(11, waited=0)
    assert watch.verdict() == "m.hugetlb_1gb still running after the per-test timeout of 10 s"
