#!/usr/bin/env python3
"""Kernel build and matrix benchmarks: JSON naming the machine and the accelerator.

  python benchmarks/kernels.py            # about 15 min on 2 cores

1. cold build: debian:7.2 with IOMMUFD_VFIO_CONTAINER=y into a scratch cache whose ccache
   is empty (the source download is timed separately);
2. rebuild after flipping IOMMUFD_VFIO_CONTAINER to n, ccache warm (target: <= 30% of 1);
3. both cells of scenarios/iommufd-compat.yaml with artifacts cached, --jobs 1 then --jobs 2;
4. the n cell's config with a one-file patch (kernels: [{source, patches}]): a fresh
   patched tree, built with ccache warm from 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import REPO, machine, timed_run, write_report

SCENARIO = REPO / "scenarios" / "iommufd-compat.yaml"
PATCH = REPO / "tests/fixtures/kernel_patches/0001-localversion-name-the-lab-s-patched-build.patch"


def run(
    env: dict[str, str], results: Path, *args: str, scenario: Path = SCENARIO
) -> dict[str, Any]:
    code, wall, summary = timed_run(env, results, str(scenario), *args)
    return {"exit_code": code, "wall_s": wall, "summary": summary}


def patched_scenario(tmp: Path) -> Path:
    """iommufd-compat's kernel with the patch on top, its n cell only."""
    text = SCENARIO.read_text().replace(
        "kernels: [debian:7.2]",
        f"kernels:\n  - source: debian:7.2\n    patches: [{PATCH}]",
    )
    path = tmp / "patched.yaml"
    path.write_text(text)
    return path


def cell_figures(summary: dict[str, Any]) -> list[dict[str, Any]]:
    keys = (
        "name",
        "verdict",
        "kernel_build_s",
        "artifacts_s",
        "boot_to_ssh_s",
        "wall_s",
        "container_provider",
    )
    return [{k: c.get(k) for k in keys} for c in summary["cells"]]


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out", type=Path, help="JSON output (default benchmarks/out/kernels-<timestamp>.json)"
    )
    args = p.parse_args()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="vfio-lab-kbench-") as tmp:
        env = dict(os.environ, VFIO_LAB_CACHE=str(Path(tmp) / "cache"))
        print("cold build of 7.2 (y) with an empty ccache", file=sys.stderr)
        cold = run(env, Path(tmp) / "r1", "--only", "*=y")
        print("rebuild after the flip (n), ccache warm", file=sys.stderr)
        flip = run(env, Path(tmp) / "r2", "--only", "*=n")
        print("both cells, artifacts cached: --jobs 1, then --jobs 2", file=sys.stderr)
        serial = run(env, Path(tmp) / "r3", "--jobs", "1")
        parallel = run(env, Path(tmp) / "r4", "--jobs", "2")
        print("the n cell with a one-file patch, ccache warm", file=sys.stderr)
        patched = run(env, Path(tmp) / "r5", "--only", "*=n", scenario=patched_scenario(Path(tmp)))
    runs = {"cold": cold, "flip": flip, "serial": serial, "parallel": parallel, "patched": patched}
    cold_build = cold["summary"]["cells"][0]["kernel_build_s"]
    flip_build = flip["summary"]["cells"][0]["kernel_build_s"]
    report.update(
        accelerator=cold["summary"]["accelerator"],
        cold_build_s=cold_build,
        flip_rebuild_s=flip_build,
        flip_rebuild_ratio=round(flip_build / cold_build, 3) if cold_build and flip_build else None,
        patched_build_s=patched["summary"]["cells"][0]["kernel_build_s"],
        two_cells_serial_wall_s=serial["wall_s"],
        two_cells_parallel_wall_s=parallel["wall_s"],
        cells={name: cell_figures(r["summary"]) for name, r in runs.items()},
        exit_codes={name: r["exit_code"] for name, r in runs.items()},
    )
    write_report(report, args.out, "kernels-")
    return 0


if __name__ == "__main__":
    sys.exit(main())
