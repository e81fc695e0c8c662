"""One run made of several: the shards of a matrix, each run on its own CI runner.

The cells' directories are copied under the new run; summary.json lists every cell with
its new directory and says which runs it came from; junit.xml, report.html and
parity.json are written as for any run. The exit code is what one run with all those
cells would have had.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lab.core.errors import UsageError
from lab.core.exitcodes import EXIT_INTERRUPTED
from lab.core.files import blaming, make_dir, write_atomic
from lab.results import reports
from lab.results.rundir import CellData, RunData, load_run, run_started
from lab.results.summary import exit_code_of


def merge(run_dirs: list[Path], into: Path) -> RunData:
    runs = [load_run(p) for p in run_dirs]
    scenarios = sorted({str(r.summary.get("scenario")) for r in runs})
    if len(scenarios) > 1:
        raise UsageError(f"merge: the runs are of different scenarios: {', '.join(scenarios)}")
    if into.exists() and any(into.iterdir()):
        raise UsageError(f"--into {into}: not empty (merge writes a new run)")
    _check_unique(runs)
    make_dir(into)
    cells = [_copy_cell(run, cell, into) for run in runs for cell in run.cells]
    summary = _summary(runs, [c.summary for c in cells], scenarios[0] if scenarios else "")
    write_atomic(into / "summary.json", json.dumps(summary, indent=2) + "\n")
    merged = RunData(into, summary, cells)
    reports.write_all(merged)
    return merged


def _check_unique(runs: list[RunData]) -> None:
    seen: dict[str, Path] = {}
    for run in runs:
        for cell in run.cells:
            if cell.name in seen:
                raise UsageError(
                    f"merge: cell {cell.name} is in both {seen[cell.name]} and {run.dir}"
                )
            seen[cell.name] = run.dir


def _copy_cell(run: RunData, cell: CellData, into: Path) -> CellData:
    name = Path(str(cell.summary.get("dir", cell.name))).name
    with blaming(into / name):
        shutil.copytree(run.dir / name, into / name, symlinks=True)
    return CellData({**cell.summary, "dir": str(into / name)}, cell.records)


def _summary(runs: list[RunData], cells: list[dict[str, Any]], scenario: str) -> dict[str, Any]:
    interrupted = any(r.summary.get("interrupted") for r in runs)
    accelerators = sorted({str(r.summary.get("accelerator")) for r in runs})
    starts = sorted(t for r in runs if (t := run_started(r)))
    return {
        "scenario": scenario,
        "run_id": "merged-" + "+".join(str(r.summary.get("run_id")) for r in runs),
        "started": starts[0] if starts else None,  # the earliest shard's
        "accelerator": ",".join(accelerators),
        "accelerator_reason": "; ".join(
            sorted({str(r.summary.get("accelerator_reason")) for r in runs})
        ),
        "exit_code": EXIT_INTERRUPTED if interrupted else exit_code_of(cells),
        "interrupted": interrupted,
        "merged_from": [{"run_id": r.summary.get("run_id"), "dir": str(r.dir)} for r in runs],
        "unused_expectations": sorted(
            set.intersection(*(set(r.summary.get("unused_expectations", [])) for r in runs))
            if runs
            else set()
        ),
        "cells": cells,
    }
