"""`vfio-lab shell`: a cell's guest, booted as a run boots it, with a shell or one command."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from lab.artifacts.kernels import KernelArtifact
from lab.cli import doctor
from lab.cli.cache import keep_ceiling
from lab.cli.common import boot_args, load_scenario, pick_cell, scenario_arg
from lab.core.cache import Cache
from lab.core.cachegc import ceiling
from lab.core.errors import UsageError
from lab.core.progress import Progress
from lab.model.scenario import Cell
from lab.run.booter import CellBooter, check_port_free
from lab.run.matrix import cell_dirname
from lab.vm.ssh import GuestSSH


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    shell = sub.add_parser(
        "shell",
        help="boot a cell's VM and open a shell in it (or run `-- CMD ARGS...` and exit with its status)",
    )
    scenario_arg(shell)
    boot_args(shell)
    shell.add_argument("--cell", help="which cell (default: the only one)")
    shell.add_argument(
        "--kernel", help="boot this kernel spec instead of the cell's (repro pins one)"
    )
    shell.add_argument(
        "--no-bind", action="store_true", help="leave the devices on their default drivers"
    )
    shell.add_argument(
        "--keep",
        action="store_true",
        help="keep the overlay afterwards and say how to boot it again",
    )
    shell.add_argument(
        "--overlay", type=Path, help="boot on this kept overlay instead of a fresh one"
    )
    shell.add_argument(
        "--payload", type=Path, help="guest tests to copy to /root/tests instead of the scenario's"
    )
    shell.set_defaults(func=cmd_shell, takes_remote=True)


def cmd_shell(args: argparse.Namespace) -> int:
    s = load_scenario(args.scenario, args.payload)
    cell = pick_cell(s, args.cell, args.kernel)
    if args.overlay is not None and not args.overlay.is_file():
        raise UsageError(f"--overlay: {args.overlay} is not a file")
    if args.gdb is not None:
        check_port_free(args.gdb)
    limit = ceiling()  # a bad $VFIO_LAB_CACHE_MAX is told now, not after the session
    cache = Cache()
    doctor.require_qemu(s.machine.qemu, [cell.arch], cache)
    cache.sweep()
    booter = CellBooter(
        cache, Progress(quiet=args.quiet), accel=args.accel, snapshots=args.snapshots
    )
    prepared = booter.prepare(cell)
    keep = _kept_overlay(cache, cell) if args.keep else None
    with (
        cache.scratch("shell-") as session_dir,
        booter.ready(
            cell,
            prepared,
            session_dir,
            bind=not args.no_bind,
            disk=args.overlay,
            keep_disk=keep,
            gdb_port=args.gdb,
        ) as ready,
    ):
        if args.gdb is not None:
            _print_gdb(args.gdb, prepared.kernel)
        if ready.bound:
            print(f"vfio-lab: bound {' '.join(ready.bound)} to vfio-pci", file=sys.stderr)
        status = _session(ready.guest.ssh, args.remote)
    if cache.built:  # a warm shell is seconds: the cache has not grown, so no walk over it
        keep_ceiling(cache, limit)
    if keep is not None:
        again = shlex.join(
            ["vfio-lab", "shell", str(s.file), "--cell", cell.name, "--overlay", str(keep)]
        )
        print(
            f"vfio-lab: kept the overlay: {keep}\nvfio-lab: boot it again: {again}", file=sys.stderr
        )
    return status


def _kept_overlay(cache: Cache, cell: Cell) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return cache.root / "kept" / f"{cell_dirname(cell.name)}-{stamp}" / "overlay.qcow2"


def _session(ssh: GuestSSH, remote: list[str]) -> int:
    if not remote:
        return ssh.interactive()
    result = ssh.run(
        shlex.join(remote),
        timeout=24 * 3600,
        on_output=lambda t: print(t, end="", flush=True),
        on_stderr=lambda t: print(t, end="", file=sys.stderr, flush=True),
    )
    return result.status


def _print_gdb(port: int, kernel: KernelArtifact) -> None:
    vmlinux = kernel.vmlinuz.parent / "vmlinux"
    where = (
        str(vmlinux)
        if vmlinux.exists()
        else f"none in the cache for {kernel.identity} (Debian ships it in linux-image-{kernel.release}-dbg)"
    )
    print(
        f"vfio-lab: gdbstub on 127.0.0.1:{port}: gdb -ex 'target remote 127.0.0.1:{port}' VMLINUX",
        file=sys.stderr,
    )
    print(f"vfio-lab: vmlinux: {where}", file=sys.stderr)
