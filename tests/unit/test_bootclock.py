"""Boot phases from console lines and the host's clock: line-fed, no QEMU."""

from __future__ import annotations

import time
from pathlib import Path

from lab.vm.bootclock import BootMarks, watching
from lab.vm.guest import Guest
from lab.vm.ssh import CommandResult

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


class BootingMachine:
    """A guest whose console says it starts sshd 0.2 s after QEMU started."""

    def __init__(self, console: Path) -> None:
        self.started = time.monotonic()
        self.console_log = console

    def check_alive(self, why: str) -> None:
        if time.monotonic() - self.started > 0.2 and not self.console_log.exists():
            self.console_log.write_text("vfio-lab: starting sshd\n")


class CountingSSH:
    """Records when each connect came; the first after the mark connects."""

    def __init__(self) -> None:
        self.attempts: list[float] = []

    def connect(self, timeout: float) -> None:
        self.attempts.append(time.monotonic())

    def run(self, command: str, timeout: float) -> CommandResult:
        return CommandResult(0, "", "")


def test_ssh_is_tried_only_once_the_console_says_sshd_starts(tmp_path: Path) -> None:
    machine, ssh = BootingMachine(tmp_path / "console.log"), CountingSSH()
    guest = Guest("cell", machine, ssh, sync_on_exit=False, disk=tmp_path / "disk")  # type: ignore[arg-type]
    with watching(machine.console_log) as marks:
        seconds = guest.wait_ready(5.0, lambda: "sshd" in marks.seen)
    assert len(ssh.attempts) == 1, "SSH was tried before the guest's network was up"
    assert ssh.attempts[0] >= marks.seen["sshd"]
    assert 0.2 <= seconds < 1.0
