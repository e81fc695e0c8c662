#!/usr/bin/env python3
"""The lab's boot beside virtme-ng's, on one kernel, in one run: JSON naming the machine
and the accelerator.

  python benchmarks/vng.py           # builds Debian's 7.2 with the lab's config plus the
                                     # `vng` fragment (what vng needs) once, then times
                                     # `-- true` three ways, --repeat times each

- `vfio-lab shell --no-bind --no-snapshot -- true` (a cold boot);
- `vfio-lab shell --no-bind -- true` (from the snapshot);
- `vng --run VMLINUZ --disable-kvm -- true` (virtme-ng, TCG, same memory and vCPUs).

Needs virtme-ng (`pip install virtme-ng`, it is not a dependency of the lab).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import REPO, VFIO_LAB, machine, write_report

SCENARIO = """\
name: vng-compare
kernels: [debian:7.2]
fragments: [iommufd, vng]
machine: {memory: 2G, cpus: 2, cmdline: [mitigations=off]}
"""


# Without udev on the host, vng's guest finds no virtio-serial port to hand back the
# command's status and vng exits 255; its console still says how the command ended.
VNG_RAN = "script exited with code 0"


def timed(argv: list[str], cwd: Path) -> tuple[float, int, str]:
    # vng runs its own virtme-run from PATH: the directory it was installed in comes first.
    env = dict(os.environ, PATH=f"{Path(argv[0]).parent}:{os.environ.get('PATH', '')}")
    start = time.monotonic()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    code = 0 if done.returncode == 255 and VNG_RAN in done.stdout + done.stderr else done.returncode
    return round(time.monotonic() - start, 2), code, done.stderr[-2000:]


def series(argv: list[str], cwd: Path, repeat: int) -> dict[str, Any]:
    timed(argv, cwd)  # warm-up: page cache, the snapshot when there is none
    runs = [timed(argv, cwd) for _ in range(repeat)]
    failed = [err for _, code, err in runs if code != 0]
    if failed:  # a failing run's time is no figure
        raise SystemExit(f"{argv[0]} failed: {failed[0]}")
    walls = [w for w, _, _ in runs]
    return {"wall_s": walls, "median_s": statistics.median(walls)}


def vmlinuz(scenario: Path) -> Path:
    code = (
        "import sys; from pathlib import Path; from lab.model import scenario;"
        "from lab.core.cache import Cache; from lab.run.booter import CellBooter;"
        "c = scenario.expand(scenario.load(Path(sys.argv[1])))[0];"
        "print(CellBooter(Cache()).prepare(c).kernel.vmlinuz)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(scenario)], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return Path(out.split()[-1])


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", type=Path, help="JSON output (default benchmarks/out/vng-*.json)")
    args = p.parse_args()
    vng = str(Path(sys.executable).parent / "vng")
    if not Path(vng).exists():
        vng = shutil.which("vng") or "vng"
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="vfio-lab-vng-") as tmp:
        scenario = Path(tmp) / "vng.yaml"
        scenario.write_text(SCENARIO)
        shell = [*VFIO_LAB, "shell", str(scenario), "-q", "--no-bind"]
        build_s, code, err = timed([*shell, "--", "true"], REPO)
        report["first_run_s"] = build_s  # the build when the kernel is not cached
        if code != 0:
            raise SystemExit(f"vfio-lab shell failed: {err}")
        kernel = vmlinuz(scenario)
        report["kernel"] = str(kernel)
        report["accelerator"] = (
            "tcg (vng --disable-kvm; the lab: auto, which finds KVM unusable here)"
        )
        report["lab_cold"] = series([*shell, "--no-snapshot", "--", "true"], REPO, args.repeat)
        report["lab_snapshot"] = series([*shell, "--", "true"], REPO, args.repeat)
        vng_argv = [vng, "--verbose", "--run", str(kernel), "--disable-kvm", "-m", "2G", "-p", "2"]
        vng_argv += ["--", "true"]
        report["vng"] = series(vng_argv, Path(tmp), args.repeat)
    v = report["vng"]["median_s"]
    report["ratio_vng_to_lab_cold"] = round(v / report["lab_cold"]["median_s"], 2)
    report["ratio_vng_to_lab_snapshot"] = round(v / report["lab_snapshot"]["median_s"], 2)
    write_report(report, args.out, "vng-")
    return 0


if __name__ == "__main__":
    sys.exit(main())
