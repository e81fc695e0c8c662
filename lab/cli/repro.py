"""`vfio-lab repro RUN_DIR/CELL`: one cell of an earlier run, again, as it was."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from lab.cli.common import (
    bisect_arg,
    bisect_step,
    quiet_arg,
    results_arg,
    run_cells,
    snapshot_arg,
)
from lab.core.cache import Cache
from lab.core.progress import Progress
from lab.run import repro
from lab.run.booter import CellBooter
from lab.run.matrix import RunOptions


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rep = sub.add_parser("repro", help="re-run exactly one cell of an earlier run")
    rep.add_argument("cell_dir", type=Path, metavar="RUN_DIR/CELL")
    rep.add_argument(
        "-k", dest="keyword", help="only guest tests matching this pytest -k expression"
    )
    results_arg(rep)
    snapshot_arg(rep)
    quiet_arg(rep)
    bisect_arg(rep)
    rep.set_defaults(func=cmd_repro)


def cmd_repro(args: argparse.Namespace) -> int:
    p = repro.plan(args.cell_dir, args.keyword)
    for note in p.notes:
        print(f"vfio-lab: note: {note}", file=sys.stderr)
    argv = repro.recorded_argv(args.cell_dir)
    print(f"# the run's QEMU command line:\n{shlex.join(argv)}")
    shell = [
        "vfio-lab",
        "shell",
        str(p.scenario_file),
        "--cell",
        p.cell.name,
        "--kernel",
        p.cell.kernel.label,
        "--payload",
        str(p.cell.scenario.payload_dir),
    ]
    print(f"# a shell in the same setup:\n{shlex.join(shell)}")
    accel = p.record["accelerator"]
    print(f"vfio-lab: note: using the run's accelerator, {accel}", file=sys.stderr)
    booter = CellBooter(Cache(), Progress(quiet=args.quiet), accel=accel, snapshots=args.snapshots)
    for note in repro.drift(p.record, booter.prepare(p.cell), p.cell.scenario.payload_dir):
        print(f"vfio-lab: drift: {note}", file=sys.stderr)
    opts = RunOptions(
        results_root=args.results,
        accel=accel,
        pytest_args=p.pytest_args,
        snapshots=args.snapshots,
    )
    if args.bisect:
        return bisect_step(p.cell.scenario, opts, args.quiet, [p.cell], args.keyword or "")
    return run_cells(p.cell.scenario, opts, args.quiet, [p.cell])
