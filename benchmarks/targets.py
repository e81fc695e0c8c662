#!/usr/bin/env python3
"""Every row of the speed targets (issue 23) measured in one run: JSON naming the machine
and the accelerator, each row with the figure it started from, its target and whether
this run met it.

  python benchmarks/targets.py                  # the warm rows (about 25 min on 2 cores
                                                #   once built; each warms its cache first)
  python benchmarks/targets.py --before REV     # + iommufd-compat and parity as commit REV
                                                #   ran them, and `vfio-lab compare` of each
  python benchmarks/targets.py --fresh          # + `make run` and `make test` into an empty
                                                #   scratch cache (the suite alone: over 40 min)

`--before ed6285e` (the commit before the speed work) needs `debootstrap` on the host: that
commit built its root filesystem with it. Rows that need a scratch cache (`--fresh`) are recorded as not measured otherwise; a row
whose command failed keeps its exit code, so no figure stands for a run that broke.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import REPO, machine, timed_run, write_report
from coldsuite import parse as parse_suite_log
from coldsuite import run as run_suite_cold
from speed import checkout_72, edit, lab, matrix_at, shell_true

EDIT_TESTS = "vfio_pci_device_test"  # upstream's five device tests: the edit loop's verdict


@dataclass(frozen=True)
class Target:
    """One row: the figure the issue started from (2-core Intel host, TCG) and its goal."""

    today_s: float
    target_s: float
    how: str


TARGETS = {
    "iommufd_compat_wall": Target(140, 60, "`vfio-lab run iommufd-compat`, both cells, warm"),
    "kselftest_vfio_one_cell": Target(200, 45, "kselftest-vfio's suite_s in a 7.2 parity cell"),
    "parity_wall": Target(761, 240, "`vfio-lab run parity`, whole run, warm"),
    "edit_to_verdict": Target(
        39, 25, f"one-line edit in vfio_pci.c of a local: 7.2 tree, `run -k {EDIT_TESTS}`"
    ),
    "minimal_kernel_boot_cold": Target(
        4.1, 3, "boot_to_ssh_s of iommufd-compat's cells with --no-snapshot (minimal 7.2)"
    ),
    "shell_from_snapshot": Target(1.88, 2.0, "`vfio-lab shell quick --no-bind -- true`, median"),
    "make_run_fresh": Target(161, 161, "`make run` into an empty scratch cache"),
    "make_test_cold": Target(4800, 2700, "`make test` into an empty scratch cache"),
}


def row(name: str, measured: float | None, exit_code: int, **extra: Any) -> dict[str, Any]:
    t = TARGETS[name]
    met = measured is not None and exit_code == 0 and measured <= t.target_s
    ratio = round(measured / t.today_s, 3) if measured is not None else None
    return {**asdict(t), "measured_s": measured, "exit_code": exit_code,
            "ratio_to_today": ratio, "met": met, **extra}  # fmt: skip


def run_wall(tmp: Path, name: str, *args: str) -> tuple[int, float, dict[str, Any]]:
    return timed_run(dict(os.environ), tmp / name, *args)


def iommufd_compat(tmp: Path) -> dict[str, Any]:
    run_wall(tmp, "compat-warmup", "iommufd-compat")  # builds or restores the snapshots
    code, wall, summary = run_wall(tmp, "compat", "iommufd-compat")
    run = str((tmp / "compat" / "latest").resolve())
    return {"iommufd_compat_wall": row("iommufd_compat_wall", wall, code, run=run),
            "accelerator": summary["accelerator"]}  # fmt: skip


def minimal_boot(tmp: Path) -> dict[str, Any]:
    # One cell at a time: with `--jobs` at its default two cold boots share 2 cores, and
    # each took 6.9-7.0 s against about 5 alone (2026-12-03).
    code, _, summary = run_wall(tmp, "compat-cold", "iommufd-compat", "--no-snapshot", "-j", "1")
    boots = {c["name"]: c["boot_to_ssh_s"] for c in summary["cells"]}
    return {"minimal_kernel_boot_cold": row("minimal_kernel_boot_cold", max(boots.values()),
                                            code, cells=boots)}  # fmt: skip


def parity(tmp: Path) -> dict[str, dict[str, Any]]:
    run_wall(tmp, "parity-warmup", "parity")  # its kernels and selftests, from a cold cache
    code, wall, summary = run_wall(tmp, "parity", "parity")
    suites = {c["name"]: c["suite_s"].get("kselftest-vfio") for c in summary["cells"]}
    slowest = max((s for s in suites.values() if s is not None), default=None)
    run = str((tmp / "parity" / "latest").resolve())
    return {
        "parity_wall": row("parity_wall", wall, code, run=run),
        "kselftest_vfio_one_cell": row("kselftest_vfio_one_cell", slowest, code, cells=suites),
    }


def shell(repeat: int) -> dict[str, Any]:
    measured = shell_true("quick", repeat)["snapshot"]
    median = measured["median_s"]
    return {"shell_from_snapshot": row("shell_from_snapshot", median, 0, wall_s=measured["wall_s"])}


def edit_to_verdict(tmp: Path) -> dict[str, Any]:
    """Build the tree once, then time an edit through build, boot and the five tests."""
    tree = checkout_72(tmp)
    scenario = tmp / "local.yaml"
    scenario.write_text(f"kernels: ['local:{tree}']\nfragments: [iommufd]\n")
    run_wall(tmp, "edit-first", str(scenario), "-k", EDIT_TESTS)
    edit(tree / "drivers" / "vfio" / "pci" / "vfio_pci.c", "targets")
    code, wall, summary = run_wall(tmp, "edit", str(scenario), "-k", EDIT_TESTS)
    (cell,) = summary["cells"]
    return {"edit_to_verdict": row("edit_to_verdict", wall, code, phases_s=cell["phases_s"],
                                   counts=cell["counts"])}  # fmt: skip


def fresh(tmp: Path, name: str, target: str) -> dict[str, Any]:
    """`make TARGET` in this checkout with an empty scratch cache."""
    env = dict(os.environ, VFIO_LAB_CACHE=str(tmp / f"cache-{name}"))
    start = time.monotonic()
    done = subprocess.run(["make", target], cwd=REPO, env=env, check=False)
    return {name: row(name, round(time.monotonic() - start, 1), done.returncode)}


def make_test_cold(tmp: Path) -> dict[str, Any]:
    """As CI runs it (benchmarks/coldsuite.py): a clean clone of HEAD, an empty cache."""
    (tmp / "cold-suite").mkdir()
    log = tmp / "cold-suite.log"
    code, wall, sha = run_suite_cold("HEAD", tmp / "cold-suite", log)
    suite = parse_suite_log(log.read_text(errors="replace"))
    return {"make_test_cold": row("make_test_cold", wall, code, commit=sha,
                                  vm_test_files_s=suite["vm_test_files_s"])}  # fmt: skip


def compare_before(rev: str, tmp: Path, after: dict[str, Any]) -> dict[str, Any]:
    """The same two scenarios as commit REV ran them, and the verdicts compared: speed
    work must change no outcome."""
    out: dict[str, Any] = {}
    for scenario, key in (("iommufd-compat", "iommufd_compat_wall"), ("parity", "parity_wall")):
        before = matrix_at(rev, tmp, scenario)
        _, done = lab("compare", before["run"], after[key].get("run", "<no run>"))
        # Exit 2 with its reason when either run is no baseline (compare refuses it).
        out[scenario] = {**before, "compare_exit_code": done.returncode,
                         "compare": outcome_lines(done.stdout + done.stderr)}  # fmt: skip
    return out


def outcome_lines(text: str) -> list[str]:
    """compare's output without the entries of "changed diagnostics" (which speed work
    may change; their count stays): every changed outcome is kept, however many."""
    kept, in_diagnostics = [], False
    for line in text.splitlines():
        if not line.startswith(" "):
            in_diagnostics = line.startswith("changed diagnostics")
        if not (in_diagnostics and line.startswith(" ")):
            kept.append(line)
    return kept


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--before", metavar="REV", help="also run the scenarios as commit REV did")
    p.add_argument("--fresh", action="store_true", help="also time make run/test from nothing")
    p.add_argument("--repeat", type=int, default=5, help="shell runs for the median (default 5)")
    p.add_argument("--out", type=Path, help="JSON output (default benchmarks/out/targets-*.json)")
    args = p.parse_args()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine()}
    rows: dict[str, Any] = {}
    try:
        measure_rows(args, rows, report)
    finally:  # Ctrl-C or a crash still writes the rows measured so far
        for missing in TARGETS.keys() - rows.keys():
            fresh_only = missing.startswith("make_") and not args.fresh
            why = "needs --fresh" if fresh_only else "not reached, or its step failed"
            rows[missing] = {**asdict(TARGETS[missing]), "measured_s": None, "met": False,
                             "not_measured": why}  # fmt: skip
        report["accelerator"] = rows.pop("accelerator", None)
        report["rows"] = rows
        write_report(report, args.out, "targets-")
    return 0


def measure_rows(args: argparse.Namespace, rows: dict[str, Any], report: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="vfio-lab-targets-") as name:
        tmp = Path(name)
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("iommufd-compat", lambda: iommufd_compat(tmp)),
            ("minimal kernel cold boot", lambda: minimal_boot(tmp)),
            ("parity", lambda: parity(tmp)),
            ("shell from a snapshot", lambda: shell(args.repeat)),
            ("edit to verdict", lambda: edit_to_verdict(tmp)),
        ]
        if args.fresh:
            steps += [("make_run_fresh", lambda: fresh(tmp, "make_run_fresh", "run")),
                      ("make_test_cold", lambda: make_test_cold(tmp))]  # fmt: skip
        for step, measure in steps:
            print(f"measuring {step}", file=sys.stderr)
            try:
                rows.update(measure())
            except Exception as e:  # one broken row must not lose the others' figures
                rows[f"error: {step}"] = f"{type(e).__name__}: {e}"
        if args.before:
            report["before"] = compare_before(args.before, tmp, rows)


if __name__ == "__main__":
    sys.exit(main())
