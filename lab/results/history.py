"""Runs over nights, in an embedded SQLite database: each test's outcome per cell and
night, the first night it went wrong, flips told apart by whether the kernel changed
(a flip with the same kernel is flakiness; with another kernel, a regression or a fix),
and each cell's pass rate and duration.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import itertools
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lab.core.errors import HostIOError, UsageError
from lab.core.files import make_dir
from lab.results.rundir import RunData, run_started

DEFAULT_DB = Path("results/history.sqlite")
GOOD = ("pass", "skip", "xfail")
SYMBOL = {
    "pass": "P",
    "fail": "F",
    "error": "E",
    "notrun": "N",
    "skip": "S",
    "xfail": "x",
    "xpass": "U",
    None: "-",
}
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, scenario TEXT, started TEXT, dir TEXT, exit_code INTEGER);
CREATE TABLE IF NOT EXISTS cells (
    run_id TEXT, cell TEXT, kernel TEXT, verdict TEXT, wall_s REAL,
    passed INTEGER, total INTEGER, PRIMARY KEY (run_id, cell));
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT, cell TEXT, test TEXT, outcome TEXT, reason TEXT,
    PRIMARY KEY (run_id, cell, test));
"""


@contextlib.contextmanager
def opened(db: Path, create: bool = False) -> Iterator[sqlite3.Connection]:
    if not create and not db.is_file():
        raise UsageError(f"{db}: no history there yet (vfio-lab history add RUN_DIR)")
    make_dir(db.parent)
    try:
        conn = sqlite3.connect(db)
    except sqlite3.Error as e:
        raise _host_fault(db, e) from e
    try:
        conn.executescript(SCHEMA)
        with conn:
            yield conn
    except sqlite3.DatabaseError as e:
        if e.sqlite_errorcode & 0xFF in _HOST_FAULTS:
            raise _host_fault(db, e) from e
        raise UsageError(f"{db}: not a vfio-lab history ({e})") from None
    finally:
        conn.close()


# SQLite's codes for a database the host could not write or open, not one that is no
# history: the errno each stands for, where one does (SQLite does not pass it on).
_HOST_FAULTS: dict[int, int | None] = {
    sqlite3.SQLITE_FULL: errno.ENOSPC,
    sqlite3.SQLITE_READONLY: errno.EROFS,
    sqlite3.SQLITE_IOERR: errno.EIO,
    sqlite3.SQLITE_CANTOPEN: None,
}


def _host_fault(db: Path, e: sqlite3.Error) -> HostIOError:
    return HostIOError(db, _HOST_FAULTS.get(e.sqlite_errorcode & 0xFF), str(e))


def add(db: Path, run: RunData) -> str:
    """Store a run (again: a run added twice is stored once); returns its id."""
    s = run.summary
    run_id = str(s.get("run_id"))
    started = run_started(run) or run_id
    with opened(db, create=True) as conn:
        for table in ("runs", "cells", "results"):
            conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
        conn.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?)",
            (run_id, s.get("scenario"), started, str(run.dir), s.get("exit_code")),
        )
        for cell in run.cells:
            c = cell.summary
            passed = sum(r.outcome == "pass" for r in cell.records)
            kernel = c.get("kernel_identity") or c.get("kernel")
            conn.execute(
                "INSERT INTO cells VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, cell.name, kernel, c.get("verdict"), c.get("wall_s"), passed,
                 len(cell.records)),
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO results VALUES (?, ?, ?, ?, ?)",
                [(run_id, cell.name, r.name, r.outcome, r.reason) for r in cell.records],
            )
    return run_id


@dataclass
class Night:
    run_id: str
    started: str
    kernel: str | None  # the cell's kernel that night (None: the cell did not run)
    outcome: str | None  # the test's outcome (None: absent)


@dataclass
class Series:
    test: str
    cell: str
    nights: list[Night]

    @property
    def symbols(self) -> str:
        return "".join(SYMBOL.get(n.outcome, "?") for n in self.nights)

    def first_failed(self) -> Night | None:
        """The first night of the current bad streak, if the last night was bad."""
        first = None
        for night in self.nights:
            if night.outcome is None:
                continue
            first = None if night.outcome in GOOD else (first or night)
        return first

    def flips(self) -> tuple[int, int]:
        """(flips with the kernel unchanged, flips with another kernel) between nights the
        test ran."""
        ran = [n for n in self.nights if n.outcome is not None]
        same = other = 0
        for before, after in itertools.pairwise(ran):
            if (before.outcome in GOOD) != (after.outcome in GOOD):
                if before.kernel == after.kernel:
                    same += 1
                else:
                    other += 1
        return same, other

    @property
    def kind(self) -> str:
        same, other = self.flips()
        if same:
            return "flaky"
        last = next((n for n in reversed(self.nights) if n.outcome is not None), None)
        if other and last is not None:
            return "regression" if last.outcome not in GOOD else "fixed"
        return "" if last is None or last.outcome in GOOD else "failing"


def series(db: Path, test_glob: str = "*", cell_glob: str = "*") -> list[Series]:
    with opened(db) as conn:
        nights = conn.execute(
            "SELECT run_id, started FROM runs ORDER BY started, run_id"
        ).fetchall()
        kernels = {(r, c): k for r, c, k in conn.execute("SELECT run_id, cell, kernel FROM cells")}
        outcomes = {
            (r, c, t): o
            for r, c, t, o in conn.execute("SELECT run_id, cell, test, outcome FROM results")
        }
    pairs = sorted({(t, c) for _, c, t in outcomes})
    return [
        Series(test, cell, [Night(r, s, kernels.get((r, cell)), outcomes.get((r, cell, test)))
                            for r, s in nights])
        for test, cell in pairs
        if fnmatch.fnmatchcase(test, test_glob) and fnmatch.fnmatchcase(cell, cell_glob)
    ]  # fmt: skip


@dataclass
class CellTrend:
    cell: str
    points: list[tuple[str, float, float | None]]  # (run id, pass rate, wall_s) per night


def trends(db: Path, cell_glob: str = "*") -> list[CellTrend]:
    with opened(db) as conn:
        rows = conn.execute(
            "SELECT c.cell, c.run_id, c.passed, c.total, c.wall_s FROM cells c "
            "JOIN runs r USING (run_id) ORDER BY r.started, r.run_id"
        ).fetchall()
    by_cell: dict[str, list[tuple[str, float, float | None]]] = {}
    for cell, run_id, passed, total, wall in rows:
        if fnmatch.fnmatchcase(cell, cell_glob):
            by_cell.setdefault(cell, []).append((run_id, passed / total if total else 0.0, wall))
    return [CellTrend(cell, points) for cell, points in sorted(by_cell.items())]


def show(db: Path, test_glob: str = "*", cell_glob: str = "*", all_tests: bool = False) -> str:
    """The history as text: each test and cell whose outcomes are not all good (all with
    `all_tests`), oldest night first, then each cell's pass rate and wall time per night."""
    lines = []
    rows = [s for s in series(db, test_glob, cell_glob) if all_tests or s.kind]
    lines.append(f"{'outcomes':12}  {'kind':10}  {'since':22}  test  [cell]")
    for s in rows:
        first = s.first_failed()
        since = first.started[:19] if first else ""
        lines.append(f"{s.symbols:12}  {s.kind:10}  {since:22}  {s.test}  [{s.cell}]")
    lines.append("(P pass, F fail, E error, N not run, S skip, x xfail, U xpass, - absent)")
    for trend in trends(db, cell_glob):
        rates = " ".join(f"{rate:.0%}" for _, rate, _ in trend.points)
        walls = " ".join(f"{w:.0f}s" if w is not None else "-" for _, _, w in trend.points)
        lines.append(f"{trend.cell}: pass rate {rates}; wall {walls}")
    return "\n".join(lines)


def svg(trend: CellTrend, width: int = 240, height: int = 40) -> str:
    """A pass-rate sparkline, inline (the report carries no external assets)."""
    n = len(trend.points)
    step = width / max(n - 1, 1)
    coords = " ".join(
        f"{i * step:.1f},{height - rate * (height - 4) - 2:.1f}"
        for i, (_, rate, _) in enumerate(trend.points)
    )
    last = trend.points[-1][1] if trend.points else 0.0
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="pass rate '
        f'{last:.0%} over {n} nights"><polyline fill="none" stroke="#2a6" stroke-width="2" '
        f'points="{coords}"/></svg>'
    )
