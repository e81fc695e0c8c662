"""A run directory as data: summary.json and each cell's tests.json, for reports and compare."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.core.errors import UsageError
from lab.model.shards import WHOLE
from lab.results.records import TestRecord


@dataclass
class CellData:
    summary: dict[str, Any]  # the cell's entry in summary.json
    records: list[TestRecord]

    @property
    def name(self) -> str:
        return str(self.summary["name"])

    def by_name(self) -> dict[str, TestRecord]:
        return {r.name: r for r in self.records}


MISSING_WHY = "missing: the cell never ran (no merged run has it: its shard's run was not given)"


@dataclass
class RunData:
    dir: Path
    summary: dict[str, Any]
    cells: list[CellData]

    @property
    def missing(self) -> list[str]:
        """Cells the run promised and never ran: a merged night whose shard never came."""
        return list(self.summary.get("missing", {}).get("cells", []))

    @property
    def never_ran(self) -> list[str]:
        """Promised cells with no result: a merged night's missing ones, or those of a whole
        run that was killed, interrupted or failed before reaching them. A shard's own run
        does not record which cells it promised (merging finds out), so it names none."""
        if self.summary.get("shard") != str(WHOLE):
            return []
        ran = {c.name for c in self.cells}
        return [c for c in self.summary.get("scenario_cells", []) if c not in ran]


# -- the matrix: tests x cells ----------------------------------------------------------
FACT_SHARE = 0.25


@dataclass
class Row:
    test: str
    cells: list[TestRecord | None]  # one per run cell, None where the test is absent
    differs: bool  # result or a per-test diagnostic differs between cells
    changed_keys: list[str]  # the diagnostics that differ

    @property
    def unexpected(self) -> bool:
        return any(r is not None and r.unexpected for r in self.cells)


def cell_facts(cell: CellData) -> dict[str, str]:
    """Diagnostics that many of a cell's tests record, all with one value
    (container_provider...): facts about the cell, shown once, not differences
    between tests."""
    values: dict[str, set[str]] = {}
    seen: dict[str, int] = {}
    for rec in cell.records:
        for k, v in rec.diagnostic_map().items():
            values.setdefault(k, set()).add(v)
            seen[k] = seen.get(k, 0) + 1
    common = max(2, len(cell.records) * FACT_SHARE)
    return {k: next(iter(v)) for k, v in values.items() if len(v) == 1 and seen[k] >= common}


def matrix(run: RunData) -> list[Row]:
    order: dict[str, None] = {}
    for cell in run.cells:
        order.update(dict.fromkeys(r.name for r in cell.records))
    lookups = [cell.by_name() for cell in run.cells]
    facts = set().union(*(cell_facts(c) for c in run.cells)) if run.cells else set()
    rows = []
    for test in order:
        recs = [lookup.get(test) for lookup in lookups]
        changed = _changed_keys([r for r in recs if r is not None], facts)
        outcomes = {r.outcome if r else None for r in recs}
        rows.append(Row(test, recs, len(outcomes) > 1 or bool(changed), changed))
    return rows


def _changed_keys(recs: list[TestRecord], facts: set[str]) -> list[str]:
    maps = [r.diagnostic_map() for r in recs]
    keys = sorted(set().union(*maps) - facts) if maps else []
    return [k for k in keys if len({m.get(k) for m in maps}) > 1]


def load_run(path: Path) -> RunData:
    """Read a run directory back; anything that is not one is a UsageError saying why."""
    summary_path = path / "summary.json"
    if not path.is_dir():
        raise UsageError(f"{path} is not a directory (expected a vfio-lab run directory)")
    if not summary_path.is_file():
        raise UsageError(
            f"{path} is not a vfio-lab run directory: it has no summary.json "
            "(give a directory under results/, e.g. results/latest)"
        )
    summary = _json(summary_path)
    if not isinstance(summary, dict) or not isinstance(summary.get("cells"), list):
        raise UsageError(f"{summary_path}: not a vfio-lab summary (no list of cells)")
    missing = summary.get("missing", {})
    if not isinstance(missing, dict) or not _names(missing.get("cells", [])):
        raise UsageError(f"{summary_path}: missing: not {{cells: [cell names]}}")
    cells = [_cell(path, c) for c in summary["cells"]]
    return RunData(path, summary, cells)


def _names(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _cell(run: Path, summary: dict[str, Any]) -> CellData:
    if not isinstance(summary, dict) or "name" not in summary:
        raise UsageError(f"{run / 'summary.json'}: a cell entry without a name")
    tests = run / Path(str(summary.get("dir", ""))).name / "tests.json"
    if not tests.is_file():
        raise UsageError(f"{tests}: missing; the run directory is incomplete")
    raw = _json(tests)
    try:
        return CellData(summary, [TestRecord.from_dict(r) for r in raw])
    except TypeError as e:
        raise UsageError(f"{tests}: not a list of test records ({e})") from None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"{path}: unreadable or not JSON ({e})") from None


def start_time(run_id: str) -> str | None:
    """A run id's timestamp (YYYYMMDD-HHMMSS, UTC) as ISO 8601."""
    try:
        when = datetime.datetime.strptime(run_id[:15], "%Y%m%d-%H%M%S")
    except ValueError:
        return None
    return when.replace(tzinfo=datetime.UTC).isoformat()


def run_started(run: RunData) -> str | None:
    """When a run started: a merged run says so itself; any other's id holds the time."""
    started = run.summary.get("started")
    return str(started) if started else start_time(str(run.summary.get("run_id", "")))
