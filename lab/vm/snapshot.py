"""A ready guest saved with QEMU's own migration, and started again from it in a second.

Saving stops the guest and migrates its whole state (RAM, vCPUs, devices) into a file
through a descriptor handed over QMP; the overlay it ran on, closed when QEMU quits,
becomes the snapshot's disk. Restoring starts QEMU with the same machine and `-incoming
fd:N` on that file, over a fresh thin overlay backed by the snapshot's disk, and the
guest runs on once the state is loaded. Both work with Debian's QEMU and the lab's.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from qemu.qmp import QMPError

from lab.core.errors import InfraError, LaunchError
from lab.vm.machine import Machine

STATE = "state"  # the migration stream
DISK = "disk.qcow2"  # the overlay as it was at the save: every restore's backing file
CONSOLE = "console.log"  # the boot that was saved, put before a restored guest's console
META = "meta.json"
FD_NAME = "vfio-lab-snapshot"
# QEMU throttles migration to 128 MiB/s by default, meant for a live guest on a network;
# a stopped guest into a local file should go as fast as the disk takes it.
MAX_BANDWIDTH = 1 << 40
POLL_S = 0.02


# QEMU's words when a device of the machine cannot be migrated at all.
_BLOCKED = ("blocked", "non-migratable")


class SnapshotFailed(InfraError):
    """Saving or restoring a snapshot did not work; `reason` says why (QEMU's words).
    `permanent`: QEMU refuses this machine every time (a migration blocker), as opposed
    to a save that may work next time (a full disk, a slow host, an interrupt)."""

    def __init__(self, action: str, reason: str, permanent: bool = False) -> None:
        self.action = action
        self.reason = reason
        self.permanent = permanent
        super().__init__(f"snapshot {action} failed: {reason}")


def save(machine: Machine, state: Path, timeout: float) -> None:
    """Stop the guest and migrate its state into `state`. QEMU stays, paused, until the
    caller shuts it down; on failure the migration is cancelled and the guest runs on."""
    try:
        machine.query("stop")
        with state.open("wb") as f:
            machine.send_fd(f.fileno(), FD_NAME)
        machine.query("migrate-set-parameters", **{"max-bandwidth": MAX_BANDWIDTH})
        machine.query("migrate", uri=f"fd:{FD_NAME}")
        _wait_migrated(machine, timeout)
    except (QMPError, OSError, SnapshotFailed) as e:
        for command in ("migrate_cancel", "cont"):
            with contextlib.suppress(QMPError, OSError):
                machine.query(command)
        if isinstance(e, SnapshotFailed):
            raise
        blocked = any(word in str(e) for word in _BLOCKED)
        raise SnapshotFailed("save", str(e), permanent=blocked) from e


def _wait_migrated(machine: Machine, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        info = machine.query("query-migrate")
        status = info.get("status") if isinstance(info, dict) else None
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            reason = info.get("error-desc", status) if isinstance(info, dict) else status
            raise SnapshotFailed("save", str(reason))
        if time.monotonic() > deadline:
            raise SnapshotFailed("save", f"migration still {status} after {timeout:g} s")
        time.sleep(POLL_S)


def restore_argv(argv: list[str], fd: int) -> list[str]:
    """The machine's own command line, told to load its state from descriptor `fd`."""
    return [*argv, "-incoming", f"fd:{fd}"]


def wait_restored(machine: Machine, timeout: float) -> float:
    """Block until the state is loaded, then run the guest (it was saved stopped, and QEMU
    keeps a guest that was stopped at the save stopped); returns seconds from QEMU's start.
    A state QEMU cannot load (damaged, or from another QEMU) makes it exit or fail the
    load: SnapshotFailed with its words."""
    deadline = machine.started + timeout
    while True:
        try:
            machine.check_alive("QEMU exited while loading the snapshot")
            info = machine.query("query-migrate")
            status = info.get("status") if isinstance(info, dict) else None
            if status == "completed":
                machine.query("cont")
                return time.monotonic() - machine.started
        except (LaunchError, QMPError, OSError) as e:
            raise SnapshotFailed("restore", qemu_words(e)) from e
        if status in ("failed", "cancelled"):
            raise SnapshotFailed("restore", qemu_words(machine.launch_error(f"load {status}")))
        if time.monotonic() > deadline:
            raise SnapshotFailed("restore", f"the state was not loaded after {timeout:g} s")
        time.sleep(POLL_S)


def qemu_words(e: Exception) -> str:
    """What QEMU said about a failed load: its log's last lines, else the error."""
    if isinstance(e, LaunchError) and e.log_tail:
        lines = [line for line in e.log_tail if not line.startswith("console: ")]
        return " | ".join(lines[-3:]) or str(e)
    return str(e)
