#!/usr/bin/env python3
"""vfio-lab benchmarks: cold artifact setup, warm `make run`, boot to SSH, payload time.

Writes one JSON file (default benchmarks/out/<timestamp>.json) that names the machine
and the accelerator with every figure. Not a test: numbers vary by host.

  python benchmarks/bench.py                 # everything (cold setup builds into a scratch cache)
  python benchmarks/bench.py --skip-cold     # warm figures only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VFIO_LAB = [sys.executable, "-m", "lab"]


@contextlib.contextmanager
def cpu_hog(processes: int) -> Iterator[list[int]]:
    """`processes` busy loops for the length of the block (a shared, noisy runner), always
    killed after."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield [p.pid for p in hogs]
    finally:
        for p in hogs:
            p.kill()
        for p in hogs:
            p.wait()


def machine() -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
    qemu = subprocess.run(
        ["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False
    ).stdout
    return {
        "hostname": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "host_kernel": platform.release(),
        "qemu": qemu.splitlines()[0] if qemu else None,
    }


def timed_run(env: dict[str, str], results: Path, *args: str) -> tuple[int, float, dict[str, Any]]:
    """`vfio-lab run ARGS` into `results`: its exit code, wall time and summary."""
    start = time.monotonic()
    done = subprocess.run(
        [*VFIO_LAB, "run", "--results", str(results), "-q", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.monotonic() - start
    return (
        done.returncode,
        round(wall, 2),
        json.loads((results / "latest" / "summary.json").read_text()),
    )


def lab_run(results: Path, env: dict[str, str]) -> dict[str, Any]:
    """One `vfio-lab run` of the default scenario; its wall time and its summary's figures."""
    code, wall, summary = timed_run(env, results)
    (cell,) = summary["cells"]
    return {
        "exit_code": code,
        "wall_s": wall,
        "accelerator": summary["accelerator"],
        "boot_to_ssh_s": cell["boot_to_ssh_s"],
        "cell_wall_s": cell["wall_s"],
        "artifacts_s": cell["artifacts_s"],
        "payload_in_guest_s": payload_seconds(Path(cell["dir"]) / "payload.log"),
        "counts": cell["counts"],
    }


def payload_seconds(log: Path) -> float | None:
    """pytest's own closing line in the guest: '... passed, ... in 8.28s'."""
    m = re.search(r" in (\d+(?:\.\d+)?)s", log.read_text()) if log.exists() else None
    return float(m.group(1)) if m else None


def cold(tmp: Path) -> dict[str, Any]:
    """Artifacts built from nothing into a scratch cache (apt and pip caches stay warm)."""
    env = dict(os.environ, VFIO_LAB_CACHE=str(tmp / "cache"))
    return lab_run(tmp / "results-cold", env)


def triage(tmp: Path) -> dict[str, Any]:
    """How fast a dying guest is told: a kernel panic (seen on the console at once) and a
    hung test (killed after a 10 s per-test timeout), each in one stock-kernel cell; and
    how long `vfio-lab report` takes to write junit.xml and report.html for a run."""
    fixtures = REPO / "tests" / "fixtures"
    out: dict[str, Any] = {}
    for name, payload, timeout in (("panic", "crash_payload", 600), ("hang", "hang_payload", 10)):
        scenario = tmp / f"{name}.yaml"
        scenario.write_text(f"payload:\n  tests: {fixtures / payload}\n  test_timeout: {timeout}\n")
        code, wall, summary = timed_run(dict(os.environ), tmp / f"results-{name}", str(scenario))
        (cell,) = summary["cells"]
        out[name] = {
            "exit_code": code,
            "test_timeout_s": timeout,
            "boot_to_ssh_s": cell["boot_to_ssh_s"],
            "cell_wall_s": cell["wall_s"],
            "run_wall_s": wall,
            "unexpected": cell["unexpected"],
        }
    run_dir = (tmp / "results-0" / "latest").resolve()
    start = time.monotonic()
    subprocess.run([*VFIO_LAB, "report", str(run_dir)], cwd=REPO, capture_output=True, check=True)
    tests = sum(len(json.loads(p.read_text())) for p in run_dir.glob("*/tests.json"))
    out["report"] = {"tests": tests, "wall_s": round(time.monotonic() - start, 2)}
    return out


def warm_make_run() -> dict[str, Any]:
    start = time.monotonic()
    done = subprocess.run(["make", "run"], cwd=REPO, capture_output=True, text=True, check=False)
    return {"exit_code": done.returncode, "wall_s": round(time.monotonic() - start, 2)}


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--skip-cold", action="store_true", help="skip building artifacts into a scratch cache"
    )
    p.add_argument("--repeat", type=int, default=3, help="warm runs to measure (default 3)")
    p.add_argument("--out", type=Path, help="JSON output (default benchmarks/out/<timestamp>.json)")
    args = p.parse_args()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="vfio-lab-bench-") as tmp:
        if not args.skip_cold:
            print(
                "cold: building kernel artifact and root filesystem into a scratch cache",
                file=sys.stderr,
            )
            report["cold"] = cold(Path(tmp))
        print("warm: make run (setup checks + one cell)", file=sys.stderr)
        report["warm_make_run"] = warm_make_run()
        runs = []
        for i in range(args.repeat):
            print(f"warm: vfio-lab run {i + 1}/{args.repeat}", file=sys.stderr)
            runs.append(lab_run(Path(tmp) / f"results-{i}", dict(os.environ)))
        report["warm_runs"] = runs
        print("triage: a panicking and a hanging payload, report writing", file=sys.stderr)
        report["triage"] = triage(Path(tmp))
    report["accelerator"] = runs[-1]["accelerator"]
    boots = sorted(r["boot_to_ssh_s"] for r in runs)
    report["boot_to_ssh_s_median"] = boots[len(boots) // 2]
    report["boot_to_ssh_s_max"] = boots[-1]
    write_report(report, args.out, "")
    return 0


def write_report(report: dict[str, Any], out: Path | None, prefix: str) -> None:
    """Print the report and write it as JSON (default benchmarks/out/<prefix><timestamp>.json)."""
    out = out or REPO / "benchmarks" / "out" / f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
