"""What several commands share: scenario and boot arguments, cell selection, running cells."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from lab.cli import doctor
from lab.cli.cache import keep_ceiling
from lab.core.cache import Cache
from lab.core.cachegc import ceiling
from lab.core.errors import UsageError
from lab.core.exitcodes import EXIT_INFRA, EXIT_OK, EXIT_UNEXPECTED, for_bisect
from lab.core.progress import Progress
from lab.model import scenario
from lab.model.kernelspec import parse_kernel_spec
from lab.model.scenario import Cell, Scenario
from lab.model.shards import ShardPlan
from lab.model.suites import parse_keyword
from lab.results.summary import table
from lab.run import bisect
from lab.run.matrix import RunOptions, ScenarioRun, shard_plan

DEFAULT_GDB_PORT = 1234


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def scenario_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "scenario",
        nargs="?",
        default="quick",
        help="a scenario file, or the name of a built-in one (default: quick)",
    )


def accel_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--accel", choices=["auto", "kvm", "tcg"], help="override the scenario's accelerator"
    )


def quiet_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def results_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--results", type=Path, default=Path("results"), help="results root (default: ./results)"
    )


def payload_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--payload", type=Path, help="guest test directory instead of the scenario's")


def only_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="GLOB",
        help="only cells whose name matches (repeatable)",
    )


def boot_args(p: argparse.ArgumentParser) -> None:
    accel_arg(p)
    p.add_argument(
        "--gdb",
        nargs="?",
        type=int,
        const=DEFAULT_GDB_PORT,
        metavar="PORT",
        help=f"start QEMU's gdbstub on 127.0.0.1:PORT (default {DEFAULT_GDB_PORT})",
    )
    snapshot_arg(p)
    quiet_arg(p)


def snapshot_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-snapshot",
        dest="snapshots",
        action="store_false",
        help="boot cold instead of restoring (and making) the machine's test-ready snapshot",
    )


def bisect_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bisect",
        action="store_true",
        help="a step of `git bisect run`, judged as `vfio-lab bisect` judges one: the raw "
        "outcomes of the tests -k selects, the scenario's expectations left out: 0 good, "
        "1 bad, 125 untested (infrastructure, a kernel alarm outside those tests); usage "
        "errors and crashes stop the bisection",
    )


def load_scenario(name: str, payload: Path | None = None) -> Scenario:
    """A scenario by path or built-in name, with --payload applied."""
    s = scenario.load(scenario.locate(name))
    if payload is not None:
        if not payload.is_dir():
            raise UsageError(f"--payload: {payload} is not a directory")
        s.payload.tests = payload.resolve()
        scenario.validate(s)  # what the suites need of the payload directory
    return s


def selected(s: Scenario, patterns: list[str]) -> list[Cell]:
    cells = scenario.select(scenario.expand(s), patterns)
    if not cells:
        names = ", ".join(c.name for c in scenario.expand(s))
        raise UsageError(
            f"--only {' '.join(patterns)} matches no cell of {s.file}; its cells: {names}"
        )
    return cells


def run_cells(
    s: Scenario,
    opts: RunOptions,
    quiet: bool,
    cells: list[Cell],
    plan: ShardPlan | None = None,
) -> int:
    """Run cells into a new run directory; the table is printed however the run ends.
    Without a `plan`, the cells are the whole of what the run promised (shard 1/1). The
    cache is kept within its ceiling afterwards."""
    limit = ceiling()  # a bad $VFIO_LAB_CACHE_MAX is told now, not after the run
    cache = Cache()
    doctor.require_qemu(s.machine.qemu, arches_of(cells), cache)
    cache.sweep()
    run = ScenarioRun(s, opts, cache, Progress(quiet=quiet))
    results = run.start(shard_plan(cells, cache) if plan is None else plan)
    interrupted = False
    try:
        run.run(cells)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        code = results.finish(interrupted=interrupted)
        print(table(results))
    keep_ceiling(cache, limit)
    cache.release()
    return code


def bisect_options(s: Scenario, opts: RunOptions) -> RunOptions:
    """A bisect step's run: without the scenario's known failures (one that fails would be
    XFAIL, exit 0, turning the step around; the judge reads raw outcomes anyway), and with
    pytest's -k selecting none of the lab's tests a result (the judge's selection spans
    every suite)."""
    s.expectations = []
    return dataclasses.replace(opts, pytest_may_select_none=True)


def bisect_step(
    s: Scenario,
    opts: RunOptions,
    quiet: bool,
    cells: list[Cell],
    keyword: str,
    plan: ShardPlan | None = None,
) -> int:
    """`--bisect`: the cells run as a step of `vfio-lab bisect` does, and its verdict on
    the raw outcomes of the tests `keyword` selects, as an exit code that `exit_code`
    turns into git's: good 0, bad 1, untested 3 (125)."""
    selection = parse_keyword(keyword)  # a bad expression stops before anything runs
    opts = bisect_options(s, opts)
    run_cells(s, opts, quiet, cells, plan)
    judged = bisect.judge_run((opts.results_root / "latest").resolve(), selection)
    print(f"vfio-lab: bisect step: {judged.verdict}: {judged.why}")
    return {"good": EXIT_OK, "bad": EXIT_UNEXPECTED, "skip": EXIT_INFRA}[judged.verdict]


def arches_of(cells: list[Cell]) -> list[str]:
    """The guest arches of `cells`, each once, in order."""
    return list(dict.fromkeys(c.arch for c in cells))


def exit_code(args: argparse.Namespace, code: int) -> int:
    """`code`, or what it means to `git bisect run` under --bisect."""
    return for_bisect(code) if getattr(args, "bisect", False) else code


def pick_cell(s: Scenario, name: str | None, kernel: str | None) -> Cell:
    cells = scenario.expand(s)
    names = ", ".join(c.name for c in cells)
    if name is None and len(cells) > 1:
        raise UsageError(f"{s.file} has several cells; pick one with --cell: {names}")
    matches = [c for c in cells if name in (None, c.name)]
    if not matches:
        raise UsageError(f"{s.file} has no cell {name!r}; its cells: {names}")
    cell = matches[0]
    # Another kernel, the cell's config kept.
    return cell if kernel is None else dataclasses.replace(cell, kernel=parse_kernel_spec(kernel))
