from __future__ import annotations

from lab.console import crash_lines
from lab.runner import crash_report

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
    report = crash_report(0, log)
    assert report.startswith("QEMU exited during the payload (exit code 0)")
    assert "! Kernel panic - not syncing: sysrq triggered crash" in report
    assert report.rstrip().endswith("write_sysrq_trigger+0x24/0x40")
    assert crash_report(0, tmp_path / "missing.log").endswith("console tail:")
