"""`vfio-lab report`, `compare`, `parity`, `merge`, `history`, `export` and `tap`: reading
what runs left."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from lab.core.errors import UsageError
from lab.core.exitcodes import EXIT_OK, EXIT_UNEXPECTED
from lab.core.files import write_file
from lab.results import compare, history, kcidb, merge, parity, reports
from lab.results import tap as tap_mod
from lab.results.outcomes import UNEXPECTED
from lab.results.rundir import load_run


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rpt = sub.add_parser(
        "report",
        help="write a run directory's junit.xml and report.html again from its results, and "
        "print each cell's slowest tests",
    )
    rpt.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    rpt.add_argument(
        "--history", type=Path, metavar="DB", help="add a trend section from this history"
    )
    rpt.set_defaults(func=cmd_report)

    hist = sub.add_parser("history", help="runs over nights: outcomes, flips, trends")
    hsub = hist.add_subparsers(dest="action", required=True)
    hadd = hsub.add_parser("add", help="store a run in the history")
    hadd.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    hshow = hsub.add_parser(
        "show",
        help="per test and cell the outcome across nights, the first bad night, and its "
        "latest change: a regression (or fix) naming the components of the cell's identity "
        "that changed, or flaky (flips with none changed); pass rate and wall time",
    )
    hshow.add_argument("--test", default="*", metavar="GLOB")
    hshow.add_argument("--cell", default="*", metavar="GLOB")
    hshow.add_argument("--all", action="store_true", help="also tests that always passed")
    for p in (hadd, hshow):
        p.add_argument(
            "--db",
            type=Path,
            default=history.DEFAULT_DB,
            help=f"the history database (default {history.DEFAULT_DB})",
        )
    hadd.set_defaults(func=cmd_history_add)
    hshow.set_defaults(func=cmd_history_show)

    cmp = sub.add_parser(
        "compare",
        help="what changed between two runs; exit 1 on regressions (new failures, lost coverage)",
    )
    cmp.add_argument("old", type=Path, metavar="OLD_RUN_DIR")
    cmp.add_argument("new", type=Path, metavar="NEW_RUN_DIR")
    cmp.add_argument(
        "--accept-lost",
        action="store_true",
        help="lost coverage (a test that ran now skips or is gone, a cell is gone) is listed "
        "but is not a regression",
    )
    cmp.set_defaults(func=cmd_compare)

    par = sub.add_parser(
        "parity",
        help="the lab's payload against the kernel's C suites, per cell; exit 1 on a "
        "disagreement no expectation explains",
    )
    par.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    par.set_defaults(func=cmd_parity)

    mrg = sub.add_parser(
        "merge",
        help="one run from the shards of one split of a scenario: summary, tests, junit, "
        "report; exit code as one run with all the cells, a missing cell counting as one that "
        "could not run (3)",
    )
    mrg.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    mrg.add_argument("--into", type=Path, required=True, metavar="DIR", help="the new run")
    mrg.set_defaults(func=cmd_merge)

    exp = sub.add_parser("export", help="write a run in another system's format")
    exp.add_argument("format", choices=["kcidb"], help="kcidb: KernelCI's KCIDB JSON (schema 5)")
    exp.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    exp.add_argument("-o", "--output", type=Path, help="file to write (default: standard output)")
    exp.add_argument(
        "--origin",
        default=kcidb.DEFAULT_ORIGIN,
        help=f"the submitting CI system's KCIDB origin (default {kcidb.DEFAULT_ORIGIN})",
    )
    exp.set_defaults(func=cmd_export)

    tap = sub.add_parser(
        "tap",
        help="parse a TAP/KTAP file (a cell's results.tap, kselftest output) and summarize it",
    )
    tap.add_argument("tap_file", type=Path, metavar="FILE")
    tap.set_defaults(func=cmd_tap)


def cmd_report(args: argparse.Namespace) -> int:
    run = load_run(args.run_dir)
    trends = history.trends(args.history) if args.history is not None else None
    reports.write_all(run, trends)
    if run.cells:
        print(reports.slowest_text(run))
    print(f"{args.run_dir / reports.HTML}\n{args.run_dir / reports.JUNIT}")
    return EXIT_OK


def cmd_merge(args: argparse.Namespace) -> int:
    run = merge.merge(args.run_dirs, args.into)
    cells = ", ".join(c.name for c in run.cells) or "none"
    print(f"merged {len(args.run_dirs)} runs into {args.into}: cells {cells}")
    if run.missing:
        absent = run.summary["missing"]["shards"]
        print(
            f"missing (promised, in no run): {', '.join(run.missing)}"
            + (f" (no run of shard {', '.join(absent)})" if absent else "")
        )
    print(f"{args.into / reports.HTML}\n{args.into / reports.JUNIT}")
    return int(run.summary["exit_code"])


def cmd_history_add(args: argparse.Namespace) -> int:
    run_id = history.add(args.db, load_run(args.run_dir))
    print(f"added run {run_id} to {args.db}")
    return EXIT_OK


def cmd_history_show(args: argparse.Namespace) -> int:
    print(history.show(args.db, args.test, args.cell, args.all))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    if not re.fullmatch(r"[a-z0-9_]+", args.origin):
        raise UsageError(f"--origin {args.origin}: KCIDB origins are [a-z0-9_]+")
    text = json.dumps(kcidb.export(load_run(args.run_dir), args.origin), indent=2) + "\n"
    if args.output is None:
        print(text, end="")
    else:
        write_file(args.output, text)
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    old, new = load_run(args.old), load_run(args.new)
    result = compare.compare(old, new, accept_lost=args.accept_lost)
    print(compare.render(result, old, new))
    return EXIT_UNEXPECTED if result.regressions else EXIT_OK


def cmd_parity(args: argparse.Namespace) -> int:
    cells = parity.run_parity(load_run(args.run_dir))
    print(parity.render(cells))
    return EXIT_UNEXPECTED if any(p.unexplained for p in cells) else EXIT_OK


def cmd_tap(args: argparse.Namespace) -> int:
    try:
        text = args.tap_file.read_bytes().decode(errors="replace")
    except OSError as e:
        raise UsageError(f"{args.tap_file}: {e.strerror}") from None
    parsed = tap_mod.parse_text(text)
    counts = ", ".join(f"{k} {v}" for k, v in parsed.counts().items() if v)
    print(f"{args.tap_file}: {len(parsed.results)} results ({counts or 'none'})")
    unexpected = [(name, r) for name, r in parsed.flat() if r.outcome in UNEXPECTED]
    for name, r in unexpected:
        print(f"  {r.outcome}: {name}" + (f" ({r.reason})" if r.reason else ""))
    problems = parsed.problems()
    for problem in problems:
        print(f"  problem: {problem}")
    if parsed.garbage:
        print(f"  {parsed.garbage} lines that are not TAP were skipped")
    return EXIT_UNEXPECTED if problems or unexpected else EXIT_OK
