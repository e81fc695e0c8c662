"""The `vfio-lab` command line: the only place errors become messages and exit codes."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from qemu.qmp.legacy import QEMUMonitorProtocol

from lab import compare, doctor, reports, repro, running, scenario
from lab import tap as tap_mod
from lab.cache import Cache
from lab.errors import LabError, UsageError
from lab.kernels import KERNEL_SOURCES, KernelArtifact, parse_kernel_spec
from lab.models import DEVICES, IOMMU_MODELS, Accel
from lab.payload import bind_devices, install_runtime
from lab.progress import Progress
from lab.qemu import build_argv
from lab.results import EXIT_INFRA, EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, table
from lab.rundir import load_run
from lab.runner import RunOptions, ScenarioRun, cell_dirname, default_jobs
from lab.scenario import Cell
from lab.schema import describe
from lab.session import CellBooter, check_port_free, vm_config
from lab.ssh import GuestSSH
from lab.triage import UNEXPECTED

EXIT_INTERRUPTED = 130
DEFAULT_GDB_PORT = 1234


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _scenario_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", nargs="?", type=Path, default=scenario.DEFAULT_SCENARIO)


def _boot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--accel", choices=["auto", "kvm", "tcg"], help="override the scenario's accelerator"
    )
    p.add_argument(
        "--gdb",
        nargs="?",
        type=int,
        const=DEFAULT_GDB_PORT,
        metavar="PORT",
        help=f"start QEMU's gdbstub on 127.0.0.1:PORT (default {DEFAULT_GDB_PORT})",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vfio-lab", description="Test VFIO and IOMMUFD in disposable QEMU guests.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a scenario's cells and collect results")
    _scenario_arg(run)
    _boot_args(run)
    run.add_argument(
        "--results", type=Path, default=Path("results"), help="results root (default: ./results)"
    )
    run.add_argument("--payload", type=Path, help="guest test directory instead of the scenario's")
    run.add_argument(
        "-k", dest="keyword", help="only guest tests matching this pytest -k expression"
    )
    run.add_argument(
        "-j", "--jobs", type=int, help="cells run at once (default: what cores and memory hold)"
    )
    run.add_argument(
        "--retries",
        type=int,
        default=0,
        metavar="N",
        help="re-run a cell up to N times when it fails for infrastructure reasons (boot, SSH, stall)",
    )
    run.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="GLOB",
        help="only cells whose name matches (repeatable)",
    )
    run.add_argument(
        "--dry-run",
        "--show-command",
        dest="dry_run",
        action="store_true",
        help="print each cell's QEMU command; boot nothing",
    )

    shell = sub.add_parser(
        "shell",
        help="boot a cell's VM and open a shell in it (or run `-- CMD ARGS...` and exit with its status)",
    )
    _scenario_arg(shell)
    _boot_args(shell)
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

    rep = sub.add_parser("repro", help="re-run exactly one cell of an earlier run")
    rep.add_argument("cell_dir", type=Path, metavar="RUN_DIR/CELL")
    rep.add_argument(
        "-k", dest="keyword", help="only guest tests matching this pytest -k expression"
    )
    rep.add_argument(
        "--results", type=Path, default=Path("results"), help="results root (default: ./results)"
    )
    rep.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    qmp = sub.add_parser(
        "qmp", help="send a QMP command to a running lab VM (no command: list them)"
    )
    qmp.add_argument("--vm", help="VM id or name (default: the only one running)")
    qmp.add_argument("qmp_command", nargs="?", metavar="COMMAND", help="e.g. query-status")
    qmp.add_argument(
        "arguments", nargs="?", metavar="JSON", help='arguments, e.g. \'{"id": "edu0"}\''
    )

    con = sub.add_parser("console", help="print a running lab VM's serial console")
    con.add_argument("--vm", help="VM id or name (default: the only one running)")
    con.add_argument("-f", "--follow", action="store_true", help="keep printing until the VM stops")

    lst = sub.add_parser("list", help="print a scenario's cells without running anything")
    _scenario_arg(lst)
    lst.add_argument(
        "--only", action="append", default=[], metavar="GLOB", help="only cells whose name matches"
    )

    rpt = sub.add_parser(
        "report", help="write a run directory's junit.xml and report.html again from its results"
    )
    rpt.add_argument("run_dir", type=Path, metavar="RUN_DIR")

    cmp = sub.add_parser(
        "compare", help="what changed between two runs; exit 1 on new failures or errors"
    )
    cmp.add_argument("old", type=Path, metavar="OLD_RUN_DIR")
    cmp.add_argument("new", type=Path, metavar="NEW_RUN_DIR")

    tap = sub.add_parser(
        "tap",
        help="parse a TAP/KTAP file (a cell's results.tap, kselftest output) and summarize it",
    )
    tap.add_argument("tap_file", type=Path, metavar="FILE")

    sub.add_parser("doctor", help="check every prerequisite and say how to fix what is missing")
    sub.add_parser("schema", help="document every scenario field, its default, and the registries")
    return p


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwinds like Ctrl-C, so every `finally` stops its QEMU and removes its overlay.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `shell -- CMD ARGS...`: everything after `--` is the guest's, never the lab's.
    remote = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = build_parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.remote = remote
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if remote and args.command != "shell":
            raise UsageError("only `vfio-lab shell` takes a command after --")
        return COMMANDS[args.command](args)
    except LabError as e:
        print(f"vfio-lab: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("vfio-lab: interrupted; guests stopped and overlays removed", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run_cells(
    s: scenario.Scenario, opts: RunOptions, quiet: bool, cells: list[Cell] | None = None
) -> int:
    doctor.require_qemu(s.machine.qemu)
    run = ScenarioRun(s, opts, Cache(), Progress(quiet=quiet))
    interrupted = False
    try:
        run.run(cells)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        code = run.results.finish(interrupted=interrupted)
        print(table(run.results))
    return code


def cmd_run(args: argparse.Namespace) -> int:
    s = scenario.load(args.scenario)
    _override_payload(s, args.payload)
    if args.dry_run:
        return _dry_run(s, args.accel, args.only)
    if args.gdb is not None:
        check_port_free(args.gdb)
    opts = RunOptions(
        results_root=args.results,
        accel=args.accel,
        pytest_args=["-k", args.keyword] if args.keyword else [],
        gdb_port=args.gdb,
        jobs=_jobs(s, args.jobs, args.gdb),
        retries=_non_negative("--retries", args.retries),
    )
    return _run_cells(s, opts, args.quiet, _selected(s, args.only))


def _non_negative(flag: str, value: int) -> int:
    if value < 0:
        raise UsageError(f"{flag}: {value} is negative")
    return value


def _jobs(s: scenario.Scenario, asked: int | None, gdb: int | None) -> int:
    if asked is not None and asked < 1:
        raise UsageError(f"--jobs: {asked} is not a positive number")
    if gdb is not None and asked not in (None, 1):
        raise UsageError("--gdb serves one guest at a time; it cannot go with --jobs")
    return 1 if gdb is not None else asked or default_jobs(s)


def _selected(s: scenario.Scenario, patterns: list[str]) -> list[Cell]:
    cells = scenario.select(scenario.expand(s), patterns)
    if not cells:
        names = ", ".join(c.name for c in scenario.expand(s))
        raise UsageError(
            f"--only {' '.join(patterns)} matches no cell of {s.file}; its cells: {names}"
        )
    return cells


def _override_payload(s: scenario.Scenario, payload: Path | None) -> None:
    if payload is not None:
        if not payload.is_dir():
            raise UsageError(f"--payload: {payload} is not a directory")
        s.payload.tests = payload.resolve()


def _dry_run(s: scenario.Scenario, accel: str | None, only: list[str]) -> int:
    chosen = accel or s.accel
    shown: Accel = "kvm" if chosen == "kvm" else "tcg"
    print(
        f"# accelerator: {chosen}"
        + (" (shown as tcg; probed at run time)" if chosen == "auto" else "")
    )
    print(
        "# <...> paths and the SSH port are filled in at run time; each cell records its real argv"
    )
    for cell in _selected(s, only):
        kernel = KernelArtifact.placeholder(cell.kernel.label)
        cfg = vm_config(
            cell, kernel, shown, Path("<overlay>"), Path("<scratch>"), Path("<cell dir>"), 0
        )
        print(f"# cell {cell.name}")
        print(shlex.join(build_argv(cfg)))
    return EXIT_OK


def _pick_cell(s: scenario.Scenario, name: str | None, kernel: str | None) -> Cell:
    cells = scenario.expand(s)
    names = ", ".join(c.name for c in cells)
    if name is None and len(cells) > 1:
        raise UsageError(f"{s.file} has several cells; pick one with --cell: {names}")
    matches = [c for c in cells if name in (None, c.name)]
    if not matches:
        raise UsageError(f"{s.file} has no cell {name!r}; its cells: {names}")
    cell = matches[0]
    return cell if kernel is None else Cell(cell.name, parse_kernel_spec(kernel), s)


def cmd_shell(args: argparse.Namespace) -> int:
    s = scenario.load(args.scenario)
    _override_payload(s, args.payload)
    cell = _pick_cell(s, args.cell, args.kernel)
    if args.overlay is not None and not args.overlay.is_file():
        raise UsageError(f"--overlay: {args.overlay} is not a file")
    if args.gdb is not None:
        check_port_free(args.gdb)
    doctor.require_qemu(s.machine.qemu)
    cache = Cache()
    booter = CellBooter(cache, Progress(quiet=args.quiet), accel=args.accel)
    prepared = booter.prepare(cell)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    keep = (
        cache.root / "kept" / f"{cell_dirname(cell.name)}-{stamp}" / "overlay.qcow2"
        if args.keep
        else None
    )
    with (
        cache.scratch("shell-") as session_dir,
        booter.boot(
            cell, prepared, session_dir, disk=args.overlay, keep_disk=keep, gdb_port=args.gdb
        ) as vm,
    ):
        if args.gdb is not None:
            _print_gdb(args.gdb, prepared.kernel)
        install_runtime(vm.ssh, s.payload_dir)
        if not args.no_bind:
            bound = bind_devices(vm.ssh, s)
            print(f"vfio-lab: bound {' '.join(bound)} to vfio-pci", file=sys.stderr)
        status = _shell_session(vm.ssh, args.remote)
    if keep is not None:
        again = shlex.join(
            ["vfio-lab", "shell", str(s.file), "--cell", cell.name, "--overlay", str(keep)]
        )
        print(
            f"vfio-lab: kept the overlay: {keep}\nvfio-lab: boot it again: {again}", file=sys.stderr
        )
    return status


def _shell_session(ssh: GuestSSH, remote: list[str]) -> int:
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


def cmd_repro(args: argparse.Namespace) -> int:
    p = repro.plan(args.cell_dir, args.keyword)
    progress = Progress(quiet=args.quiet)
    for note in p.notes:
        print(f"vfio-lab: note: {note}", file=sys.stderr)
    argv = json.loads((args.cell_dir / "qemu-argv.json").read_text() or "[]")
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
    print(
        f"vfio-lab: note: using the run's accelerator, {p.record['accelerator']}", file=sys.stderr
    )
    booter = CellBooter(Cache(), progress, accel=p.record["accelerator"])
    for note in repro.drift(p.record, booter.prepare(p.cell), p.cell.scenario.payload_dir):
        print(f"vfio-lab: drift: {note}", file=sys.stderr)
    opts = RunOptions(
        results_root=args.results, accel=p.record["accelerator"], pytest_args=p.pytest_args
    )
    return _run_cells(p.cell.scenario, opts, args.quiet, [p.cell])


def cmd_qmp(args: argparse.Namespace) -> int:
    directory = Cache().root / "running"
    if args.qmp_command is None:
        vms = running.list_running(directory)
        for vm in vms:
            print(f"{vm.id}  {vm.name}  pid {vm.pid}  ssh 127.0.0.1:{vm.ssh_port}")
        if not vms:
            print("no lab VM is running", file=sys.stderr)
        return EXIT_OK
    vm = running.pick(directory, args.vm)
    try:
        arguments = json.loads(args.arguments) if args.arguments else {}
    except ValueError as e:
        raise UsageError(f"JSON arguments: {e}") from None
    qmp = QEMUMonitorProtocol(vm.qmp_socket)
    qmp.connect()
    try:
        print(json.dumps(qmp.cmd_raw(args.qmp_command, arguments), indent=2))
    finally:
        qmp.close()
    return EXIT_OK


def cmd_console(args: argparse.Namespace) -> int:
    vm = running.pick(Cache().root / "running", args.vm)
    with open(vm.console_log, errors="replace") as f:
        while True:
            chunk = f.read()
            if chunk:
                print(chunk, end="", flush=True)
            elif not args.follow or not vm.alive():
                return EXIT_OK
            else:
                time.sleep(0.2)


def cmd_list(args: argparse.Namespace) -> int:
    s = scenario.load(args.scenario)
    print(f"{s.name}: {s.description}".rstrip(": "))
    for cell in _selected(s, args.only):
        print(f"  {cell.name}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    run = load_run(args.run_dir)
    reports.write_all(run)
    print(f"{args.run_dir / reports.HTML}\n{args.run_dir / reports.JUNIT}")
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    old, new = load_run(args.old), load_run(args.new)
    result = compare.compare(old, new)
    print(compare.render(result, old, new))
    return EXIT_UNEXPECTED if result.regressions else EXIT_OK


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


COMMANDS = {
    "run": cmd_run,
    "shell": cmd_shell,
    "repro": cmd_repro,
    "qmp": cmd_qmp,
    "console": cmd_console,
    "list": cmd_list,
    "report": cmd_report,
    "compare": cmd_compare,
    "tap": cmd_tap,
    "doctor": cmd_doctor,
    "schema": cmd_schema,
}


if __name__ == "__main__":
    sys.exit(main())
