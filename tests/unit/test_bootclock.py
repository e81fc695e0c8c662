"""Boot phases from console lines and the host's clock: line-fed, no QEMU."""

from __future__ import annotations

import time
from pathlib import Path

from lab.vm.bootclock import BootMarks, watching

CONSOLE = [
    (1.0, "SeaBIOS (version 1.16.2-debian-1.16.2-1)"),
    (1.5, "[    0.000000] Linux version 6.1.0-41-amd64 (debian-kernel@lists.debian.org)"),
    (4.0, "[    2.400000] Run /init as init process"),
    (5.0, "garbage \x00\x01 from a half-written line"),
    (5.5, "vfio-lab: starting sshd"),
]


def test_phases_from_the_marks() -> None:
    marks = BootMarks()
    for now, line in CONSOLE:
        marks.feed(line, now)
    phases = marks.phases(qmp_up=0.3, started=0.0, ssh_up=7.0)
    assert phases == {
        "qemu_start": 0.3,
        "firmware+kernel": 3.7,
        "userspace": 1.5,
        "ssh": 1.5,
    }


def test_a_mark_never_seen_folds_its_phase_into_the_next() -> None:
    marks = BootMarks()
    marks.feed("[    2.4] Run /init as init process", 4.0)  # a kernel that never said sshd
    assert marks.phases(qmp_up=0.3, started=0.0, ssh_up=7.0) == {
        "qemu_start": 0.3,
        "firmware+kernel": 3.7,
        "ssh": 3.0,
    }


def test_watching_tails_a_console_file_as_it_grows(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    with watching(log) as marks:
        time.sleep(0.05)  # the file does not exist yet: no error
        log.write_text("[ 0.0] Linux version 7.2.13\n[ 1.0] Run /init as init")
        time.sleep(0.1)
        with log.open("a") as f:
            f.write(" process\nvfio-lab: starting sshd\n")
        deadline = time.monotonic() + 5
        while len(marks.seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert set(marks.seen) == {"kernel", "init", "sshd"}
    assert marks.seen["kernel"] <= marks.seen["init"] <= marks.seen["sshd"]
