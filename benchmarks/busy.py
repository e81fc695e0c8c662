#!/usr/bin/env python3
"""Where a cell's time goes on a busy host (issue 21): JSON naming the machine and the
accelerator.

  python benchmarks/busy.py                       # idle, then under a CPU hog (one run each)
  python benchmarks/busy.py --repeat 3 --trace    # + QEMU's intel-iommu trace events
  python benchmarks/busy.py -k ''                 # the whole scenario, not only -k

Runs `vfio-lab run iommufd-compat -k K` (after one untimed warm-up run that builds or
restores what the cells need) on the idle host, then while N busy-loop processes (N =
cores, `--hog`) hold every CPU, and records for each run and cell:

- each test's outcome and duration (tests.json), the cell's verdict, infrastructure
  error, problems, warnings (a stalled transmit queue SSH survived) and `host_wait_s`;
- QEMU's main loop as a user sees it: the round trip of a QMP `query-status` on the
  VM's user monitor every --interval seconds, with the test that was running (from the
  console's markers); QMP commands run in the main loop, the one that also serves
  virtio-net, slirp and the console, so a vCPU holding the big QEMU lock or a main
  thread the host does not schedule shows as a slow answer;
- each QEMU thread's time running and time runnable but waiting for a CPU (schedstat,
  grouped by thread name: `CPU 0/TCG`, the main thread, `worker`, ...): waiting is the
  host's doing, and is what the lab's timeouts now leave out;
- with --trace: `trace-event-set-state vtd_*` on each VM's user monitor as soon as it is
  listed, and the count of each vtd_ event in the cell's qemu.log (QEMU's log trace
  backend writes to its stderr, which the lab keeps as qemu.log). Other event groups:
  --trace-events 'vtd_inv*,virtio_net*'.

For a profile of QEMU itself, `perf record -g -p PID` on a VM that `vfio-lab qmp` lists
(no command) gives the PID; the lab does not run perf.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import cpu_hog, machine, timed_run, write_report

from lab.core.cache import Cache
from lab.vm import inventory
from lab.vm.console import MARKER

SCENARIO = "iommufd-compat"
SELECTION = "vfio_dma_mapping_test and hugetlb"  # the seed-000 test, both hugepage sizes
QMP_TIMEOUT_S = 60.0
TRACE_LINE = re.compile(r"\b(vtd_\w+|virtio_\w+)\b")


class Qmp:
    """A QMP client of its own: benchmarks/qemu.py shadows the `qemu` package here."""

    def __init__(self, path: str, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.lines = self.sock.makefile("rb")
        self.lines.readline()  # the greeting
        self.cmd("qmp_capabilities")

    def cmd(self, command: str, **arguments: Any) -> Any:
        """The command's answer ("return" or "error"), events skipped."""
        message = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            line = self.lines.readline()
            if not line:
                raise EOFError("QEMU closed its monitor")
            answer = json.loads(line)
            if "event" not in answer:
                return answer

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


def threads(pid: int) -> dict[int, tuple[str, float, float]]:
    """Each thread of `pid`: (name, seconds run, seconds waited for a CPU)."""
    out = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                run_ns, wait_ns = (task / "schedstat").read_text().split()[:2]
                name = (task / "comm").read_text().strip()
                out[int(task.name)] = (name, int(run_ns) / 1e9, int(wait_ns) / 1e9)
    return out


@dataclass
class WatchedVM:
    """One lab VM while it runs: its QMP answers, its threads, its running test."""

    vm: inventory.RunningVM
    qmp: Qmp | None = None
    offset: int = 0
    running: str = ""
    latencies: list[tuple[float, str]] = field(default_factory=list)  # (ms, test)
    first_threads: dict[int, tuple[str, float, float]] = field(default_factory=dict)
    last_threads: dict[int, tuple[str, float, float]] = field(default_factory=dict)
    trace: str | None = None  # what enabling the trace events answered

    def follow_console(self) -> None:
        with contextlib.suppress(OSError), open(self.vm.console_log, "rb") as f:
            f.seek(self.offset)
            new = f.read()
            self.offset += len(new)
            for m in MARKER.finditer(new.decode(errors="replace")):
                self.running = m.group("name") if m.group("what") == "start" else ""

    def sample(self, trace_events: str | None) -> None:
        self.follow_console()
        now = threads(self.vm.pid)
        for tid, t in now.items():
            self.first_threads.setdefault(tid, t)
        self.last_threads.update(now)
        if not self.vm.qmp_socket:
            return
        try:
            if self.qmp is None:
                self.qmp = Qmp(self.vm.qmp_socket, QMP_TIMEOUT_S)
            if trace_events and self.trace is None:
                answer = self.qmp.cmd("trace-event-set-state", name=trace_events, enable=True)
                self.trace = json.dumps(answer)
            started = time.monotonic()
            self.qmp.cmd("query-status")
            self.latencies.append((round((time.monotonic() - started) * 1000, 2), self.running))
        except (OSError, EOFError, ValueError):  # QEMU quit: its figures so far stand
            self.close()

    def close(self) -> None:
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                self.qmp.close()
            self.qmp = None

    def report(self) -> dict[str, Any]:
        ms = sorted(m for m, _ in self.latencies)
        by_test: dict[str, float] = {}
        for m, test in self.latencies:
            by_test[test or "(between tests)"] = max(m, by_test.get(test or "(between tests)", 0))
        per_name: dict[str, dict[str, float]] = {}
        for tid, (name, run, wait) in self.last_threads.items():
            _, run0, wait0 = self.first_threads[tid]
            agg = per_name.setdefault(name, {"threads": 0, "run_s": 0.0, "wait_s": 0.0})
            agg["threads"] += 1
            agg["run_s"] = round(agg["run_s"] + run - run0, 2)
            agg["wait_s"] = round(agg["wait_s"] + wait - wait0, 2)
        return {
            "qmp_query_status_ms": {
                "samples": len(ms),
                "median": statistics.median(ms) if ms else None,
                "p95": ms[int(0.95 * (len(ms) - 1))] if ms else None,
                "max": ms[-1] if ms else None,
                "max_by_test": by_test,
            },
            "threads": per_name,
            "trace_enable": self.trace,
        }


class Sampler:
    """Every lab VM that runs while it does, sampled every `interval` seconds."""

    def __init__(self, interval: float, trace_events: str | None) -> None:
        self.interval = interval
        self.trace_events = trace_events
        self.vms: dict[str, WatchedVM] = {}  # by cell directory name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for vm in self.vms.values():
            vm.close()

    def _loop(self) -> None:
        running = Cache().root / "running"
        while not self._stop.wait(self.interval):
            for vm in inventory.list_running(running):
                cell = Path(vm.console_log).parent.name
                watched = self.vms.setdefault(cell, WatchedVM(vm))
                if watched.vm.pid == vm.pid:
                    watched.sample(self.trace_events)


def trace_counts(qemu_log: Path) -> dict[str, int]:
    counts: Counter[str] = Counter()
    with contextlib.suppress(OSError), qemu_log.open(errors="replace") as f:
        for line in f:
            if m := TRACE_LINE.search(line):
                counts[m.group(1)] += 1
    return dict(counts.most_common())


def cell_report(cell: dict[str, Any], sampler: Sampler, traced: bool) -> dict[str, Any]:
    cell_dir = Path(cell["dir"])
    try:
        records = json.loads((cell_dir / "tests.json").read_text())
    except (OSError, ValueError):
        records = []
    out = {
        key: cell.get(key)
        for key in ("verdict", "infra_error", "problems", "warnings", "host_wait_s", "wall_s")
    }
    out["payload_s"] = cell.get("phases_s", {}).get("payload")
    out["earlier_attempts"] = cell.get("earlier_attempts", [])
    out["tests"] = {r["name"]: [r["outcome"], r.get("duration_s")] for r in records}
    watched = sampler.vms.get(cell_dir.name)
    out["qemu"] = watched.report() if watched else None
    if traced:
        out["trace_counts"] = trace_counts(cell_dir / "qemu.log")
    return out


def one_run(tmp: Path, name: str, args: argparse.Namespace, trace: str | None) -> dict[str, Any]:
    selection = ["-k", args.k] if args.k else []
    with Sampler(args.interval, trace) as sampler:
        code, wall, summary = timed_run(dict(os.environ), tmp / name, args.scenario, *selection)
    return {
        "exit_code": code,
        "wall_s": wall,
        "accelerator": summary["accelerator"],
        "cells": {c["name"]: cell_report(c, sampler, bool(trace)) for c in summary["cells"]},
    }


def durations(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Each cell's tests: the median duration idle and loaded, and their ratio."""
    seen: dict[tuple[str, str], dict[str, list[float]]] = {}
    for run in runs:
        for cell, data in run["cells"].items():
            for test, (_, seconds) in data["tests"].items():
                if seconds is not None:
                    phases = seen.setdefault((cell, test), {"idle": [], "loaded": []})
                    phases[run["phase"]].append(seconds)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (cell, test), phases in sorted(seen.items()):
        idle = statistics.median(phases["idle"]) if phases["idle"] else None
        loaded = statistics.median(phases["loaded"]) if phases["loaded"] else None
        ratio = round(loaded / idle, 2) if idle and loaded is not None else None
        out.setdefault(cell, {})[test] = {"idle_s": idle, "loaded_s": loaded, "ratio": ratio}
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--scenario", default=SCENARIO, help=f"default {SCENARIO}")
    p.add_argument("-k", default=SELECTION, help=f"pytest -k (default {SELECTION!r}; '': all)")
    p.add_argument("--repeat", type=int, default=1, help="runs per phase (default 1)")
    p.add_argument("--hog", type=int, default=os.cpu_count() or 1, help="busy loops (cores)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between QMP samples")
    p.add_argument("--trace", action="store_true", help="enable QEMU trace events (vtd_*)")
    p.add_argument("--trace-events", default="vtd_*", help="the events --trace enables")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed first run")
    p.add_argument("--out", type=Path, help="JSON output (default benchmarks/out/busy-<ts>.json)")
    args = p.parse_args()
    trace = args.trace_events if args.trace else None
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "scenario": args.scenario,
        "k": args.k,
        "hog_processes": args.hog,
        "trace_events": trace,
    }
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vfio-lab-busy-") as scratch:
        tmp = Path(scratch)
        if not args.no_warmup:
            print("warm-up run (untimed)", file=sys.stderr)
            report["warmup_exit_code"] = one_run(tmp, "warmup", args, None)["exit_code"]
        for phase in ("idle", "loaded"):
            for i in range(args.repeat):
                print(f"{phase} run {i + 1}/{args.repeat}", file=sys.stderr)
                with cpu_hog(args.hog if phase == "loaded" else 0):
                    runs.append({"phase": phase, **one_run(tmp, f"{phase}-{i}", args, trace)})
    report["accelerator"] = runs[-1]["accelerator"]
    report["runs"] = runs
    report["durations"] = durations(runs)
    write_report(report, args.out, "busy-")
    return 0


if __name__ == "__main__":
    sys.exit(main())
