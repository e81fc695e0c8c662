"""`vfio-lab run` (and `--dry-run`) and `vfio-lab list`."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from lab.artifacts.kernels import KernelArtifact
from lab.artifacts.qemu import describe_qemu, qemu_placeholder
from lab.cli.common import (
    bisect_arg,
    bisect_step,
    boot_args,
    load_scenario,
    only_arg,
    payload_arg,
    results_arg,
    run_cells,
    scenario_arg,
    selected,
)
from lab.core.cache import Cache
from lab.core.errors import UsageError
from lab.core.exitcodes import EXIT_OK
from lab.model.arches import ARCHES, host_arch
from lab.model.scenario import Cell, Scenario
from lab.model.shards import (
    WHOLE,
    Shard,
    ShardPlan,
    durations,
    parse_shard,
    shard_cells,
)
from lab.model.variants import Accel
from lab.run.booter import check_port_free, vm_config
from lab.run.matrix import RunOptions, default_jobs, shard_plan
from lab.vm.accel import foreign_choice
from lab.vm.qemu import build_argv


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run a scenario's cells and collect results")
    scenario_arg(run)
    boot_args(run)
    bisect_arg(run)
    results_arg(run)
    payload_arg(run)
    run.add_argument(
        "-k", dest="keyword", help="only guest tests matching this pytest -k expression"
    )
    run.add_argument(
        "-j",
        "--jobs",
        type=int,
        help="cells run at once (default: a cell per core, as many as memory holds)",
    )
    run.add_argument(
        "--retries",
        type=int,
        default=0,
        metavar="N",
        help="re-run a cell up to N times when it fails for infrastructure reasons (boot, SSH, stall)",
    )
    only_arg(run)
    shard_args(run)
    run.add_argument(
        "--dry-run",
        "--show-command",
        dest="dry_run",
        action="store_true",
        help="print each cell's QEMU command; boot nothing",
    )
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="print a scenario's cells without running anything")
    scenario_arg(lst)
    only_arg(lst)
    shard_args(lst)
    lst.set_defaults(func=cmd_list)


def shard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shard",
        type=_shard,
        metavar="K/N",
        help="only shard K of N (each kernel tree's cells in one shard; balanced by "
        "--durations, else by count)",
    )
    p.add_argument(
        "--durations",
        type=Path,
        metavar="RUN_DIR",
        help="balance shards by the cell wall times of this earlier run",
    )


def _shard(text: str) -> Shard:
    try:
        return parse_shard(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def sharded(s: Scenario, args: argparse.Namespace) -> tuple[ShardPlan, list[Cell]]:
    """The cells --only selects, narrowed to --shard K/N if given, and what the run is
    part of: that shard of all the cells --only selects."""
    selection, shard, cells = shard_selection(s, args)
    return shard_plan(selection, Cache(), shard), cells


def shard_selection(s: Scenario, args: argparse.Namespace) -> tuple[list[Cell], Shard, list[Cell]]:
    """The cells --only selects, the shard asked for, and that shard's cells."""
    cells = selected(s, args.only)
    if args.shard is None and args.durations is not None:
        raise UsageError("--durations balances shards: give --shard K/N too")
    shard = args.shard or WHOLE
    weights = durations(args.durations) if args.durations is not None else None
    return cells, shard, shard_cells(cells, shard, weights)


def cmd_run(args: argparse.Namespace) -> int:
    s = load_scenario(args.scenario, args.payload)
    if args.dry_run:
        return dry_run(s, args.accel, args.only)
    if args.gdb is not None:
        check_port_free(args.gdb)
    opts = RunOptions(
        results_root=args.results,
        accel=args.accel,
        pytest_args=["-k", args.keyword] if args.keyword else [],
        gdb_port=args.gdb,
        jobs=_jobs(s, args.jobs, args.gdb),
        retries=_non_negative("--retries", args.retries),
        snapshots=args.snapshots,
    )
    part_of, cells = sharded(s, args)
    if args.bisect:
        return bisect_step(s, opts, args.quiet, cells, args.keyword or "", part_of)
    return run_cells(s, opts, args.quiet, cells, part_of)


def _non_negative(flag: str, value: int) -> int:
    if value < 0:
        raise UsageError(f"{flag}: {value} is negative")
    return value


def _jobs(s: Scenario, asked: int | None, gdb: int | None) -> int:
    if asked is not None and asked < 1:
        raise UsageError(f"--jobs: {asked} is not a positive number")
    if gdb is not None and asked not in (None, 1):
        raise UsageError("--gdb serves one guest at a time; it cannot go with --jobs")
    return 1 if gdb is not None else asked or default_jobs(s)


def dry_run(s: Scenario, accel: str | None, only: list[str]) -> int:
    chosen = accel or s.accel
    host = host_arch()
    print(
        f"# accelerator: {chosen}"
        + (" (shown as tcg; probed at run time)" if chosen == "auto" else "")
    )
    for name in s.machine.arch:
        print(f"# qemu: {s.machine.qemu}: {describe_qemu(s.machine.qemu, ARCHES[name])}")
    print(
        "# <...> paths and the SSH port are filled in at run time; each cell records its real argv"
    )
    for cell in selected(s, only):
        arch = ARCHES[cell.arch]
        foreign = foreign_choice(chosen, arch, host)
        shown: Accel = foreign.accel if foreign else "kvm" if chosen == "kvm" else "tcg"
        binary = qemu_placeholder(s.machine.qemu, arch)
        kernel = KernelArtifact.placeholder(cell.kernel.label)
        cfg = vm_config(
            cell, kernel, binary, shown, Path("<overlay>"), Path("<sockets>"), Path("<cell dir>"), 0
        )
        print(f"# cell {cell.name}")
        print(shlex.join(build_argv(cfg)))
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    s = load_scenario(args.scenario)
    print(f"{s.name}: {s.description}".rstrip(": "))
    if args.shard is not None:
        print(f"shard {args.shard}:")
    for cell in shard_selection(s, args)[2]:
        print(f"  {cell.name}")
    return EXIT_OK
