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


def test_console_watch_gives_up_on_a_dead_network(tmp_path):
    from lab.vm.console import ConsoleWatch

    log = tmp_path / "console.log"
    log.write_text("[ 1.0] vfio-lab: test-start a\n")
    watch = ConsoleWatch(log, stall_s=60)
    assert watch.verdict() is None
    with log.open("a") as f:
        f.write(
            "[ 38.0] virtio_net virtio1 eth0: NETDEV WATCHDOG: CPU: 0: transmit queue 0 timed out 5524 ms\n"
        )
    assert watch.verdict() == (
        "the guest's network stalled (NETDEV WATCHDOG: CPU: 0: transmit queue 0 timed out 5524 ms)"
    )


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
