#!/usr/bin/env python3
"""The whole suite from an empty cache, as CI runs it: `CI=true .ci/run` in a clean clone
of a commit, with a cache directory of its own that starts empty. JSON with the machine,
the wall time, each tox environment's time and each real-VM test file's time (pytest's
`--durations=0`: setup, call and teardown of every test), slowest first.

  python benchmarks/coldsuite.py                   # HEAD, into a fresh clone and cache
  python benchmarks/coldsuite.py --rev REV         # another commit
  python benchmarks/coldsuite.py --log FILE        # only read the output of an earlier run

Needs the machine to itself for a figure worth keeping (two cores: any other build or
guest stretches it). Host packages and pip's cache are not emptied: the figure is the
lab's own cold cost, not the package mirror's.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import REPO, machine, write_report

# `12.34s call     tests/integration/test_x.py::test_y` (pytest's --durations lines)
DURATION = re.compile(r"^([\d.]+)s (setup|call|teardown)\s+(\S+?)::(\S+)", re.M)
# `  lint: OK (12.34=setup[1.2]+cmd[11.1] seconds)` (tox's summary)
TOX_ENV = re.compile(r"^\s+(\w+): (OK|FAIL)(?: code \d+)? \(([\d.]+)(?:=[^ ]*)? seconds\)", re.M)
OUTCOMES = re.compile(r"^=+ (.*(?:passed|failed|error).*) in [\d.]+s", re.M)


def parse(text: str) -> dict[str, Any]:
    """What a `.ci/run` log says about where its time went."""
    per_file: dict[str, float] = defaultdict(float)
    items: dict[str, float] = defaultdict(float)
    for seconds, _, path, test in DURATION.findall(text):
        per_file[path] += float(seconds)
        items[f"{path}::{test}"] += float(seconds)
    slowest = sorted(items.items(), key=lambda kv: -kv[1])[:15]
    return {
        "tox_envs_s": {env: float(s) for env, _, s in TOX_ENV.findall(text)},
        "tox_env_results": {env: status for env, status, _ in TOX_ENV.findall(text)},
        "pytest_summaries": OUTCOMES.findall(text),
        "vm_test_files_s": dict(
            sorted(((p, round(s, 1)) for p, s in per_file.items()), key=lambda kv: -kv[1])
        ),
        "slowest_tests_s": {name: round(s, 1) for name, s in slowest},
    }


def accelerators(since: float) -> dict[str, int]:
    """How many runs the suite made with each accelerator: every summary.json its real
    tests wrote under pytest's temporary directories since `since`."""
    counts: dict[str, int] = defaultdict(int)
    base = Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}"
    for summary in base.glob("pytest-*/**/summary.json"):
        run = json.loads(summary.read_text())
        # A run's summary is an object; other tools' summary.json (a list) are not runs.
        if summary.stat().st_mtime >= since and isinstance(run, dict):
            counts[str(run.get("accelerator"))] += 1
    return dict(counts)


def run(rev: str, work: Path, log: Path) -> tuple[int, float, str]:
    """A clean clone of `rev` run as CI does, with an empty cache; (exit code, wall, sha)."""
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", rev], check=True)
    sha = subprocess.run(
        ["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    env = dict(os.environ, CI="true", VFIO_LAB_CACHE=str(work / "cache"))
    start = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(
            [str(clone / ".ci" / "run")], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT,
            check=False,
        )  # fmt: skip
    return done.returncode, round(time.monotonic() - start, 1), sha


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rev", default="HEAD", help="the commit to run (default HEAD)")
    p.add_argument("--log", type=Path, help="read this earlier run's output instead of running")
    p.add_argument("--out", type=Path, help="JSON output (default benchmarks/out/coldsuite-*.json)")
    args = p.parse_args()
    report: dict[str, Any] = {"machine": machine()}
    if args.log:
        report.update(source=str(args.log), **parse(args.log.read_text(errors="replace")))
    else:
        with tempfile.TemporaryDirectory(
            prefix="vfio-lab-coldsuite-", ignore_cleanup_errors=True
        ) as name:
            work = Path(name)
            log = work / "ci-run.log"
            start = time.time()
            code, wall, sha = run(args.rev, work, log)
            text = log.read_text(errors="replace")
            kept = Path(tempfile.gettempdir()) / f"vfio-lab-coldsuite-{sha[:12]}.log"
            kept.write_text(text)
            report.update(commit=sha, exit_code=code, wall_s=wall, log=str(kept), **parse(text))
            report["accelerators"] = accelerators(start)
    write_report(report, args.out, "coldsuite")
    return 0 if report.get("exit_code", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
