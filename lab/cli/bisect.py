"""`vfio-lab bisect`: which commit of a local kernel tree broke a test."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lab.cli.common import (
    accel_arg,
    bisect_options,
    load_scenario,
    payload_arg,
    pick_cell,
    quiet_arg,
    results_arg,
    run_cells,
    scenario_arg,
    snapshot_arg,
)
from lab.core.errors import UsageError
from lab.core.exitcodes import EXIT_OK
from lab.model.suites import parse_keyword
from lab.results.rundir import CellData
from lab.run import bisect
from lab.run.matrix import RunOptions


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser(
        "bisect",
        help="git bisect a local kernel tree with the lab as oracle: build, boot and run the "
        "selected tests at each step",
    )
    scenario_arg(b)
    b.add_argument("--kernel", required=True, metavar="local:PATH", help="the git checkout")
    b.add_argument("--good", required=True, metavar="REV", help="a commit where the tests pass")
    b.add_argument("--bad", required=True, metavar="REV", help="a commit where they do not")
    b.add_argument(
        "-k",
        dest="keyword",
        required=True,
        help="the tests that decide: a pytest -k expression, for the C suites matched "
        "against their suite:id names",
    )
    b.add_argument("--cell", help="the scenario's cell (its config) to build each step with")
    payload_arg(b)
    results_arg(b)
    accel_arg(b)
    snapshot_arg(b)
    quiet_arg(b)
    b.set_defaults(func=cmd_bisect)


def cmd_bisect(args: argparse.Namespace) -> int:
    if not args.kernel.startswith("local:"):
        raise UsageError(f"--kernel {args.kernel}: bisect needs a git checkout, local:PATH")
    keyword = parse_keyword(args.keyword)
    tree = Path(args.kernel.removeprefix("local:")).resolve()
    s = load_scenario(args.scenario, args.payload)
    cell = pick_cell(s, args.cell, f"local:{tree}")
    root = args.results / f"bisect-{time.strftime('%Y%m%d-%H%M%S')}"
    opts = bisect_options(
        s,
        RunOptions(
            results_root=root,
            accel=args.accel,
            pytest_args=["-k", keyword.text],
            snapshots=args.snapshots,
        ),
    )

    def step(commit: str) -> tuple[CellData, Path | None]:
        print(f"vfio-lab bisect: testing {commit[:12]}", flush=True)
        run_cells(s, opts, args.quiet, [cell])
        run_dir = (root / "latest").resolve()
        return bisect.load_step(run_dir, cell.name), run_dir

    outcome = bisect.bisect(tree, args.good, args.bad, keyword, step)
    for st in outcome.steps:
        print(f"  {st.commit[:12]} {st.verdict:4}  {st.run_dir}  {st.subject}\n      {st.why}")
    print(f"first bad commit: {outcome.first_bad} {outcome.subject}")
    print(f"each step's run: {root}")
    return EXIT_OK
