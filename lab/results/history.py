"""Runs over nights, in an embedded SQLite database: each test's outcome per cell and
night, the first night it went wrong, and each cell's pass rate and duration.

What a series is comes from its LATEST change between good and bad (judged on raw
outcomes: an expectation added or dropped is no change) and the cell's identity on the
two nights around it (summary.json's per-cell `identity`: kernel, config, QEMU, payload,
root filesystem, suites, machine): components that changed make it a regression (or a
fix) naming them; none is flakiness, counted over the nights with that same identity;
one not recorded on both nights (a run from before the lab recorded it) leaves it open.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lab.core.errors import HostIOError, UsageError
from lab.core.files import make_dir
from lab.results.outcomes import GOOD, LEGEND, PASS, SYMBOL, XFAIL
from lab.results.rundir import RunData, run_started

DEFAULT_DB = Path("results/history.sqlite")
COMPONENTS = ("kernel", "config", "qemu", "payload", "rootfs", "suites", "machine")
ABSENT = "-"  # the symbol of a night without the test
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, scenario TEXT, started TEXT, dir TEXT, exit_code INTEGER);
CREATE TABLE IF NOT EXISTS cells (
    run_id TEXT, cell TEXT, kernel TEXT, verdict TEXT, wall_s REAL,
    passed INTEGER, total INTEGER, identity TEXT, PRIMARY KEY (run_id, cell));
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT, cell TEXT, test TEXT, outcome TEXT, reason TEXT, raw TEXT,
    PRIMARY KEY (run_id, cell, test));
"""
# Columns a database made by an earlier vfio-lab lacks: (table, column).
ADDED = (("cells", "identity"), ("results", "raw"))


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
        for table, column in ADDED:
            if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")
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
            passed = sum(r.outcome == PASS for r in cell.records)
            kernel = c.get("kernel_identity") or c.get("kernel")
            # A run from before the lab recorded the identity: its kernel is all it says.
            identity = c.get("identity") or ({"kernel": kernel} if c.get("kernel_identity") else {})
            conn.execute(
                "INSERT INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, cell.name, kernel, c.get("verdict"), c.get("wall_s"), passed,
                 len(cell.records), json.dumps(identity)),
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?)",
                [(run_id, cell.name, r.name, r.outcome, r.reason, r.raw_outcome)
                 for r in cell.records],
            )  # fmt: skip
    return run_id


@dataclass
class Night:
    run_id: str
    started: str
    identity: dict[str, str]  # the cell's that night, by component (empty: not recorded)
    outcome: str | None  # the test's outcome (None: absent)
    raw: str | None = None  # before expectations (None: absent, or stored before it was kept)

    @property
    def kernel(self) -> str | None:
        return self.identity.get("kernel")

    @property
    def bad(self) -> bool:
        """Judged on the raw outcome; a night stored before raw outcomes were kept, on its
        outcome."""
        return (self.raw or self.outcome) not in GOOD


def differences(before: dict[str, str], after: dict[str, str]) -> tuple[list[str], list[str]]:
    """(components that changed, components not recorded on both nights)."""
    changed = [c for c in COMPONENTS if c in before and c in after and before[c] != after[c]]
    unknown = [c for c in COMPONENTS if c not in before or c not in after]
    return changed, unknown


@dataclass(frozen=True)
class Change:
    """What a series' latest change between good and bad says."""

    kind: str  # "" all good | failing | known failure | flaky | regression | fixed (+ "?")
    flips: int = 0  # flaky: flips over the nights with the latest identity
    changed: list[str] = field(default_factory=list)  # regression, fixed: what changed
    unknown: list[str] = field(default_factory=list)  # regression?, fixed?: not recorded

    def __str__(self) -> str:
        if self.kind == "flaky":
            return f"flaky ({self.flips} flip{'s' * (self.flips != 1)}, same identity)"
        if self.changed:
            return f"{self.kind}: {', '.join(self.changed)} changed"
        if self.unknown:
            return f"{self.kind} ({', '.join(self.unknown)} not recorded, the rest the same)"
        return self.kind


def _symbol(outcome: str | None) -> str:
    return ABSENT if outcome is None else SYMBOL.get(outcome, "?")


@dataclass
class Series:
    test: str
    cell: str
    nights: list[Night]

    @property
    def symbols(self) -> str:
        return "".join(_symbol(n.outcome) for n in self.nights)

    def first_failed(self) -> Night | None:
        """The first night of the current bad streak, if the last night was bad."""
        first = None
        for night in self.nights:
            if night.outcome is None:
                continue
            first = (first or night) if night.bad else None
        return first

    def change(self) -> Change:
        ran = [n for n in self.nights if n.outcome is not None]
        flips = [i for i in range(1, len(ran)) if ran[i - 1].bad != ran[i].bad]
        if not flips:
            last = ran[-1] if ran else None
            if last is None or not last.bad:
                return Change("")
            return Change("known failure" if last.outcome == XFAIL else "failing")
        before, after = ran[flips[-1] - 1], ran[flips[-1]]
        kind = "regression" if after.bad else "fixed"
        changed, unknown = differences(before.identity, after.identity)
        if changed:
            return Change(kind, changed=changed)
        if unknown:
            return Change(f"{kind}?", unknown=unknown)
        # Flaky: count the flips over the nights around it with the very same identity.
        start = flips[-1]
        while start > 0 and differences(ran[start - 1].identity, after.identity) == ([], []):
            start -= 1
        return Change("flaky", flips=sum(i > start for i in flips))

    @property
    def kind(self) -> str:
        return str(self.change())


def series(db: Path, test_glob: str = "*", cell_glob: str = "*") -> list[Series]:
    with opened(db) as conn:
        nights = conn.execute(
            "SELECT run_id, started FROM runs ORDER BY started, run_id"
        ).fetchall()
        identities = {
            (r, c): json.loads(i) if i else {}
            for r, c, i in conn.execute("SELECT run_id, cell, identity FROM cells")
        }
        outcomes = {
            (r, c, t): (o, raw)
            for r, c, t, o, raw in conn.execute(
                "SELECT run_id, cell, test, outcome, raw FROM results"
            )
        }
    pairs = sorted({(t, c) for _, c, t in outcomes})
    return [
        Series(test, cell, [Night(r, s, identities.get((r, cell), {}),
                                  *outcomes.get((r, cell, test), (None, None)))
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
    rows = [(s, s.kind) for s in series(db, test_glob, cell_glob)]
    rows = [(s, kind) for s, kind in rows if all_tests or kind]
    width = max([len("kind"), *(len(kind) for _, kind in rows)])
    lines = [f"{'outcomes':12}  {'kind':{width}}  {'since':22}  test  [cell]"]
    for s, kind in rows:
        first = s.first_failed()
        since = first.started[:19] if first else ""
        lines.append(f"{s.symbols:12}  {kind:{width}}  {since:22}  {s.test}  [{s.cell}]")
    lines.append(f"({LEGEND}, {ABSENT} absent)")
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
