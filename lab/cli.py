"""The `vfio-lab` command line: the only place errors become messages and exit codes."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from lab import doctor, scenario
from lab.cache import Cache
from lab.errors import LabError
from lab.kernels import KERNEL_SOURCES, KernelArtifact
from lab.models import DEVICES, IOMMU_MODELS, Accel
from lab.progress import Progress
from lab.qemu import build_argv
from lab.results import EXIT_INFRA, EXIT_OK, EXIT_USAGE, table
from lab.runner import RunOptions, ScenarioRun, vm_config
from lab.schema import describe

EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vfio-lab", description="Test VFIO and IOMMUFD in disposable QEMU guests.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a scenario's cells and collect results")
    run.add_argument("scenario", nargs="?", type=Path, default=scenario.DEFAULT_SCENARIO)
    run.add_argument(
        "--accel", choices=["auto", "kvm", "tcg"], help="override the scenario's accelerator"
    )
    run.add_argument(
        "--results", type=Path, default=Path("results"), help="results root (default: ./results)"
    )
    run.add_argument("--payload", type=Path, help="guest test directory instead of the scenario's")
    run.add_argument(
        "-k", dest="keyword", help="only guest tests matching this pytest -k expression"
    )
    run.add_argument(
        "--dry-run",
        "--show-command",
        dest="dry_run",
        action="store_true",
        help="print each cell's QEMU command; boot nothing",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    lst = sub.add_parser("list", help="print a scenario's cells without running anything")
    lst.add_argument("scenario", nargs="?", type=Path, default=scenario.DEFAULT_SCENARIO)

    sub.add_parser("doctor", help="check every prerequisite and say how to fix what is missing")
    sub.add_parser("schema", help="document every scenario field, its default, and the registries")
    return p


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwinds like Ctrl-C, so every `finally` stops its QEMU and removes its overlay.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return COMMANDS[args.command](args)
    except LabError as e:
        print(f"vfio-lab: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("vfio-lab: interrupted; guests stopped and overlays removed", file=sys.stderr)
        return EXIT_INTERRUPTED


def cmd_run(args: argparse.Namespace) -> int:
    s = scenario.load(args.scenario)
    if args.payload:
        if not args.payload.is_dir():
            print(f"vfio-lab: error: --payload: {args.payload} is not a directory", file=sys.stderr)
            return EXIT_USAGE
        s.payload.tests = args.payload.resolve()
    if args.dry_run:
        return _dry_run(s, args.accel)
    doctor.require_qemu(s.machine.qemu)
    opts = RunOptions(
        results_root=args.results,
        accel=args.accel,
        pytest_args=["-k", args.keyword] if args.keyword else [],
    )
    run = ScenarioRun(s, opts, Cache(), Progress(quiet=args.quiet))
    interrupted = False
    try:
        run.run()
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        code = run.results.finish(interrupted=interrupted)
        print(table(run.results))
    return code


def _dry_run(s: scenario.Scenario, accel: str | None) -> int:
    chosen = accel or s.accel
    shown: Accel = "kvm" if chosen == "kvm" else "tcg"
    print(
        f"# accelerator: {chosen}"
        + (" (shown as tcg; probed at run time)" if chosen == "auto" else "")
    )
    print(
        "# <...> paths and the SSH port are filled in at run time; each cell records its real argv"
    )
    for cell in scenario.expand(s):
        kernel = KernelArtifact.placeholder(cell.kernel.label)
        cfg = vm_config(
            cell, kernel, shown, Path("<overlay>"), Path("<scratch>"), Path("<cell dir>"), 0
        )
        print(f"# cell {cell.name}")
        print(shlex.join(build_argv(cfg)))
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    s = scenario.load(args.scenario)
    print(f"{s.name}: {s.description}".rstrip(": "))
    for cell in scenario.expand(s):
        print(f"  {cell.name}")
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = doctor.all_checks(Cache())
    print(doctor.report(checks))
    return EXIT_OK if all(c.ok for c in checks) else EXIT_INFRA


def cmd_schema(args: argparse.Namespace) -> int:
    print("Scenario fields (key, default, meaning):")
    for key, default, doc in describe(scenario.Scenario):
        print(f"  {key:24} {default:22} {doc}")
    for title, registry in (
        ("IOMMU models", IOMMU_MODELS),
        ("devices", DEVICES),
        ("kernel sources", KERNEL_SOURCES),
    ):
        print(f"{title}:")
        for name, variant in registry.items():
            print(f"  {name:24} {variant.doc}")
    return EXIT_OK


COMMANDS = {"run": cmd_run, "list": cmd_list, "doctor": cmd_doctor, "schema": cmd_schema}


if __name__ == "__main__":
    sys.exit(main())
