"""Which lab guests are running right now, for `vfio-lab qmp` and `vfio-lab console`.

Each guest is announced with a small JSON file under <cache>/running/ while
QEMU runs; entries whose QEMU is gone are ignored and pruned (and swept by the next
lab's `Cache.sweep`, when a killed lab left them). QEMU is named by its pid and its
start time: a process that got the pid of a QEMU gone is no guest.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from lab.core.cache import is_running
from lab.core.errors import UsageError
from lab.core.files import make_dir, write_atomic


@dataclass(frozen=True)
class RunningVM:
    id: str
    name: str
    pid: int
    ssh_port: int
    qmp_socket: str  # the user's monitor; the lab keeps its own
    console_log: str
    start: int | None = None  # QEMU's process_start; None: an older lab's entry, stale

    def alive(self) -> bool:
        return is_running(self.pid, self.start)


@contextlib.contextmanager
def announced(directory: Path, vm: RunningVM) -> Iterator[None]:
    """`vm` is listed while the block runs."""
    make_dir(directory)
    path = directory / f"{vm.id}.json"
    write_atomic(path, json.dumps(asdict(vm), indent=2) + "\n")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def list_running(directory: Path) -> list[RunningVM]:
    vms = []
    for path in sorted(directory.glob("*.json")):
        try:
            vm = RunningVM(**json.loads(path.read_text()))
        except (ValueError, TypeError, OSError):
            continue
        if vm.alive():
            vms.append(vm)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    return vms


def pick(directory: Path, wanted: str | None) -> RunningVM:
    """The VM named or id'd `wanted`, or the only one running."""
    vms = list_running(directory)
    matches = vms if wanted is None else [vm for vm in vms if wanted in (vm.id, vm.name)]
    if len(matches) == 1:
        return matches[0]
    names = ", ".join(f"{vm.id} ({vm.name})" for vm in vms) or "none"
    if not matches:
        what = f"named {wanted!r}" if wanted else "at all"
        raise UsageError(f"no lab VM is running {what} (running: {names})")
    raise UsageError(f"several lab VMs are running; pick one with --vm: {names}")
