#!/usr/bin/env python3
"""The kernel's C suites beside the lab's payload: JSON naming the machine and accelerator.

  python benchmarks/suites.py          # the built-in parity scenario, both cells

Per cell: each suite's time in the guest (the lab's pytest payload, kselftest-vfio,
kselftest-iommu), boot to SSH, the cell's wall time, the kernel's and the suites' build
times as this run found them (cached artifacts: none), and the parity counts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import machine, timed_run, write_report

KEYS = ("name", "verdict", "counts", "suite_s", "boot_to_ssh_s", "wall_s", "kernel_build_s")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, help="JSON output (default benchmarks/out/suites-*.json)")
    args = p.parse_args()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="vfio-lab-suites-") as tmp:
        code, wall, summary = timed_run(dict(os.environ), Path(tmp), "parity")
        parity = json.loads((Path(tmp) / "latest" / "parity.json").read_text())
    report.update(
        accelerator=summary["accelerator"],
        scenario="parity",
        exit_code=code,
        wall_s=wall,
        cells=[{k: c.get(k) for k in KEYS} for c in summary["cells"]],
        parity={
            name: {k: v for k, v in cell.items() if k != "only"}
            for name, cell in parity["cells"].items()
        },
    )
    write_report(report, args.out, "suites-")
    return 0


if __name__ == "__main__":
    sys.exit(main())
