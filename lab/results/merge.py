"""One run made of several: the shards of a matrix, each run on its own CI runner.

Every run records what it is part of (`shard`, `scenario_cells`, `scenario_hash`);
merge refuses runs that are not shards of one split of one version of one scenario,
and records each promised cell that no run has in the merged run's `missing` section
(whose exit code then says the infrastructure failed, unless a cell's tests went wrong).

The cells' directories are copied under the new run; summary.json lists every cell with
its new directory and says which runs it came from; junit.xml, report.html and
parity.json are written as for any run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lab.core.errors import UsageError
from lab.core.exitcodes import EXIT_INTERRUPTED
from lab.core.files import blaming, copy_file, make_dir, write_atomic
from lab.model.shards import WHOLE, Shard, ShardPlan, parse_shard
from lab.results import reports
from lab.results.rundir import CellData, RunData, load_run, run_started
from lab.results.summary import exit_code_of

PLAN_FIELDS = ("shard", "scenario_cells", "scenario_hash")


def merge(run_dirs: list[Path], into: Path) -> RunData:
    if not run_dirs:
        raise UsageError("merge: no runs given")
    runs = [load_run(p) for p in run_dirs]
    if into.exists() and any(into.iterdir()):
        raise UsageError(f"--into {into}: not empty (merge writes a new run)")
    plans = _one_split(runs)
    _check_unique(runs)
    make_dir(into)
    cells = [_copy_cell(run, cell, into) for run in runs for cell in run.cells]
    summary = _summary(runs, plans, [c.summary for c in cells])
    write_atomic(into / "summary.json", json.dumps(summary, indent=2) + "\n")
    merged = RunData(into, summary, cells)
    reports.write_all(merged)
    return merged


def _plan(run: RunData) -> ShardPlan:
    """What a run says it is part of; a run from before runs said so is refused."""
    where = run.dir / "summary.json"
    s = run.summary
    if absent := [f for f in PLAN_FIELDS if f not in s]:
        raise UsageError(
            f"merge: {where} has no {', '.join(absent)}: it does not say which shard of which "
            "cells it ran (a run from an older vfio-lab?); run that shard again"
        )
    cells, digest = s["scenario_cells"], s["scenario_hash"]
    if not isinstance(cells, list) or not all(isinstance(c, str) for c in cells):
        raise UsageError(f"merge: {where}: scenario_cells is not a list of cell names")
    if not isinstance(digest, str):
        raise UsageError(f"merge: {where}: scenario_hash is not a string")
    try:
        shard = parse_shard(str(s["shard"]))
    except UsageError as e:
        raise UsageError(f"merge: {where}: shard {e}") from None
    return ShardPlan(shard, tuple(cells), digest)


def _one_split(runs: list[RunData]) -> list[ShardPlan]:
    """Each run's plan, if they are distinct shards of one split of one version of one
    scenario, each with only cells it promised."""
    scenarios = sorted({str(r.summary.get("scenario")) for r in runs})
    if len(scenarios) > 1:
        raise UsageError(f"merge: the runs are of different scenarios: {', '.join(scenarios)}")
    plans = [_plan(r) for r in runs]
    for run, p in zip(runs[1:], plans[1:], strict=True):
        _check_same_split((runs[0].dir, plans[0]), (run.dir, p), scenarios[0])
    seen: dict[Shard, Path] = {}
    for run, p in zip(runs, plans, strict=True):
        if p.shard in seen:
            raise UsageError(f"merge: {seen[p.shard]} and {run.dir} are both shard {p.shard}")
        seen[p.shard] = run.dir
        if stray := [c.name for c in run.cells if c.name not in p.cells]:
            raise UsageError(
                f"merge: {run.dir} has cells its scenario_cells lacks: {', '.join(stray)}"
            )
    return plans


def _check_same_split(
    first: tuple[Path, ShardPlan], other: tuple[Path, ShardPlan], scenario: str
) -> None:
    (a, pa), (b, pb) = first, other
    if pa.shard.count != pb.shard.count:
        raise UsageError(
            f"merge: the runs are shards of different splits: {a} is shard {pa.shard}, "
            f"{b} is shard {pb.shard}"
        )
    if pa.cells != pb.cells:
        raise UsageError(
            f"merge: {a} and {b} promised different cells (another --only, or another "
            f"version of the scenario): {_difference(pa.cells, pb.cells, a, b)}"
        )
    if pa.scenario_hash != pb.scenario_hash:
        raise UsageError(
            f"merge: {a} and {b} ran different versions of scenario {scenario} "
            f"(scenario_hash {pa.scenario_hash} and {pb.scenario_hash})"
        )


def _difference(a: tuple[str, ...], b: tuple[str, ...], a_dir: Path, b_dir: Path) -> str:
    only = [
        f"only {where} has {', '.join(c for c in mine if c not in theirs)}"
        for mine, theirs, where in ((a, b, a_dir), (b, a, b_dir))
        if set(mine) - set(theirs)
    ]
    return "; ".join(only) or "the same cells in another order"


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
        # Reflinks at best, not hard links: a shard's directory and the merged one are
        # two records, and a later report rewriting one must not rewrite the other.
        shutil.copytree(run.dir / name, into / name, symlinks=True, copy_function=_copy)
    return CellData({**cell.summary, "dir": str(into / name)}, cell.records)


def _copy(src: str, dst: str) -> None:
    copy_file(Path(src), Path(dst))


def _missing(runs: list[RunData], plans: list[ShardPlan]) -> dict[str, list[str]]:
    """The promised cells no run has, and the shards no run was of."""
    ran = {c.name for r in runs for c in r.cells}
    count = plans[0].shard.count
    present = {p.shard.index for p in plans}
    return {
        "cells": [c for c in plans[0].cells if c not in ran],
        "shards": [str(Shard(k, count)) for k in range(1, count + 1) if k not in present],
    }


def _summary(
    runs: list[RunData], plans: list[ShardPlan], cells: list[dict[str, Any]]
) -> dict[str, Any]:
    interrupted = any(r.summary.get("interrupted") for r in runs)
    accelerators = sorted({str(r.summary.get("accelerator")) for r in runs})
    starts = sorted(t for r in runs if (t := run_started(r)))
    missing = _missing(runs, plans)
    whole = ShardPlan(WHOLE, plans[0].cells, plans[0].scenario_hash)
    return {
        "scenario": runs[0].summary.get("scenario"),
        "run_id": "merged-" + "+".join(str(r.summary.get("run_id")) for r in runs),
        **whole.to_json(),
        "started": starts[0] if starts else None,  # the earliest shard's
        "accelerator": ",".join(accelerators),
        "accelerator_reason": "; ".join(
            sorted({str(r.summary.get("accelerator_reason")) for r in runs})
        ),
        "exit_code": EXIT_INTERRUPTED if interrupted else exit_code_of(cells, missing["cells"]),
        "interrupted": interrupted,
        "merged_from": [
            {"run_id": r.summary.get("run_id"), "dir": str(r.dir), "shard": str(p.shard)}
            for r, p in zip(runs, plans, strict=True)
        ],
        "missing": missing,
        "unused_expectations": sorted(
            set.intersection(*(set(r.summary.get("unused_expectations", [])) for r in runs))
        ),
        "cells": cells,
    }
