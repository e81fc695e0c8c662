#!/usr/bin/env python3
"""The lab's QEMU against Debian's, side by side: JSON naming the machine and accelerator.

  python benchmarks/qemu.py                  # cold build + 3 runs of each QEMU
  python benchmarks/qemu.py --skip-cold --runs 5 --scenario iommufd-compat --only '*=n'

1. the lab's QEMU for x86_64 guests built cold (a scratch cache with an empty ccache;
   the source download is part of it), then asked for again (cached);
2. the same scenario run N times with machine.qemu: system and N times with lab: boot
   to SSH, payload time in the guest, whole-cell wall time, and how many runs the
   guest's network stalled in (an infrastructure error naming NETDEV WATCHDOG or a stall,
   or a NETDEV WATCHDOG SSH survived, among the cell's warnings).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import machine, payload_seconds, timed_run, write_report

from lab.artifacts.qemu import ensure_lab_qemu
from lab.core.cache import Cache
from lab.core.progress import Progress
from lab.model.arches import ARCHES, DEFAULT_ARCH
from lab.model.scenario import locate


def build_times(tmp: Path) -> dict[str, Any]:
    cache, arch = Cache(tmp / "cache"), ARCHES[DEFAULT_ARCH]
    started = time.monotonic()
    built = ensure_lab_qemu(arch, cache, Progress())
    cold = round(time.monotonic() - started, 1)
    started = time.monotonic()
    ensure_lab_qemu(arch, cache)
    return {
        "version": built.version,
        "patches": list(built.patches),
        "cold_build_s": cold,
        "cached_s": round(time.monotonic() - started, 2),
    }


def with_qemu(scenario: Path, qemu: str, dest: Path) -> Path:
    """The scenario with machine.qemu set (built-in scenarios name no relative paths)."""
    data = yaml.safe_load(scenario.read_text())
    data.setdefault("machine", {})["qemu"] = qemu
    data["name"] = f"{scenario.stem}-{qemu}"
    out = dest / f"{scenario.stem}-{qemu}.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


def runs(scenario: Path, qemu: str, n: int, only: list[str], tmp: Path) -> dict[str, Any]:
    cells = []
    for i in range(n):
        print(f"{qemu}: run {i + 1}/{n}", file=sys.stderr)
        args = [a for glob in only for a in ("--only", glob)]
        code, run_wall, summary = timed_run(
            dict(os.environ), tmp / f"results-{qemu}-{i}", str(scenario), "--retries", "0", *args
        )
        for cell in summary["cells"]:
            error = cell.get("infra_error") or ""
            cells.append(
                {
                    "exit_code": code,
                    "cell": cell["name"],
                    "qemu_version": cell.get("qemu_version"),
                    "boot_to_ssh_s": cell["boot_to_ssh_s"],
                    "payload_in_guest_s": payload_seconds(Path(cell["dir"]) / "payload.log"),
                    "cell_wall_s": cell["wall_s"],
                    "run_wall_s": run_wall,
                    "stalled": "NETDEV WATCHDOG" in " ".join([error, *cell.get("warnings", [])])
                    or "no progress" in error,
                    "accelerator": summary["accelerator"],
                }
            )
    ok = [c for c in cells if c["boot_to_ssh_s"]]
    return {
        "runs": cells,
        "boot_to_ssh_s_median": statistics.median(c["boot_to_ssh_s"] for c in ok) if ok else None,
        "payload_in_guest_s_median": statistics.median(
            c["payload_in_guest_s"] for c in ok if c["payload_in_guest_s"]
        )
        if ok
        else None,
        "stalls": sum(c["stalled"] for c in cells),
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--skip-cold", action="store_true", help="do not time a cold QEMU build")
    p.add_argument("--runs", type=int, default=3, help="runs of each QEMU (default 3)")
    p.add_argument("--scenario", default="quick", help="scenario to run (default: quick)")
    p.add_argument("--only", action="append", default=[], metavar="GLOB", help="cells to run")
    p.add_argument("--out", type=Path, help="JSON output (default benchmarks/out/qemu-*.json)")
    args = p.parse_args()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="vfio-lab-bench-qemu-") as tmp:
        if not args.skip_cold:
            report["build"] = build_times(Path(tmp))
        scenario = locate(args.scenario)
        report["scenario"] = args.scenario
        for qemu in ("system", "lab"):
            variant = with_qemu(scenario.resolve(), qemu, Path(tmp))
            report[qemu] = runs(variant, qemu, args.runs, args.only, Path(tmp))
    report["accelerator"] = sorted({c["accelerator"] for c in report["system"]["runs"]})
    write_report(report, args.out, "qemu-")
    return 0


if __name__ == "__main__":
    sys.exit(main())
