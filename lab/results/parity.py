"""Parity: do the lab's payload and the kernel's own C suites come to the same thing on the
same guest? Per cell, every test id both produced, with both outcomes.

Test ids are upstream's in every suite (`rec.id`), so the lab's record of
`vfio_dma_mapping_test.iommufd_anonymous.dma_map_unmap` meets kselftest-vfio's.

- The pairs table counts the ids per (suite, lab outcome, C suite outcome); an outcome an
  expectation rewrote shows what it was: `xfail(fail)`, `xfail(error)`, `xpass(pass)`.
- Two records agree when their RAW outcomes (before expectations) are the same: skip/skip
  agrees but is no pass, and a crash (error) differs from a failed assertion (fail) even
  when an expectation made both XFAIL.
- An expectation explains a disagreement only from the record that carries it (the suite
  it matched) and only in the direction it declares: that suite's test failed, as declared
  (XFAIL), where the other suite's passed or skipped. Every other disagreement is
  unexplained: `vfio-lab parity` exits 1 on it, and `payload.parity: gate` fails the cell.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lab.core.errors import UsageError
from lab.model.suites import DEFAULT_SUITE
from lab.results.outcomes import CLEAN, FAILED, XFAIL
from lab.results.records import TestRecord
from lab.results.rundir import RunData

PARITY = "parity.json"
GATE = "gate"  # payload.parity: an unexplained disagreement fails the cell


@dataclass(frozen=True)
class Pair:
    suite: str  # the C suite
    lab: str  # the lab's outcome, with its raw one where an expectation rewrote it
    other: str  # the C suite's, likewise
    agree: bool  # the same raw outcome


@dataclass
class Disagreement:
    id: str
    lab: str  # the lab's outcome, as in Pair
    other: str  # the C suite's outcome, as in Pair
    suite: str
    explained_by: str = ""  # the reason of the expectation that explains it


@dataclass
class CellParity:
    cell: str
    pairs: dict[Pair, int] = field(default_factory=dict)  # ids per pair of outcomes
    disagree: list[Disagreement] = field(default_factory=list)
    only: dict[str, list[str]] = field(default_factory=dict)  # suite -> ids no other has

    @property
    def shared(self) -> int:
        return sum(self.pairs.values())

    @property
    def agree(self) -> int:
        return sum(n for pair, n in self.pairs.items() if pair.agree)

    @property
    def unexplained(self) -> list[Disagreement]:
        return [d for d in self.disagree if not d.explained_by]

    def add(self, suite: str, mine: TestRecord, theirs: TestRecord) -> None:
        mine_raw, theirs_raw = raw(self.cell, mine), raw(self.cell, theirs)
        pair = Pair(suite, shown(mine, mine_raw), shown(theirs, theirs_raw), mine_raw == theirs_raw)
        self.pairs[pair] = self.pairs.get(pair, 0) + 1
        if not pair.agree:
            why = explained_by(mine, theirs_raw) or explained_by(theirs, mine_raw)
            self.disagree.append(Disagreement(mine.id, pair.lab, pair.other, suite, why))


def raw(cell: str, rec: TestRecord) -> str:
    outcome = rec.raw_outcome
    if outcome is None:
        raise UsageError(
            f"cell {cell}: {rec.name} matched an expectation, but its record in tests.json has "
            "no raw outcome (written before vfio-lab kept it), so parity cannot tell a crash "
            "from a failed assertion; run the cell again"
        )
    return outcome


def shown(rec: TestRecord, raw_outcome: str) -> str:
    return rec.outcome if rec.outcome == raw_outcome else f"{rec.outcome}({raw_outcome})"


def explained_by(known: TestRecord, other_raw: str) -> str:
    """The reason of `known`'s expectation when the difference is the one it declares: its
    own suite's test failed as declared where the other suite's did not fail."""
    exp = known.expectation
    failed_as_declared = known.outcome == XFAIL and known.raw_outcome in FAILED
    return exp["reason"] if exp and failed_as_declared and other_raw in CLEAN else ""


def cell_parity(cell: str, records: list[TestRecord]) -> CellParity | None:
    """None when the cell ran no C suite."""
    by_suite: dict[str, dict[str, TestRecord]] = {}
    for rec in records:
        if "/" not in rec.id:  # a subtest belongs to its parent's verdict
            by_suite.setdefault(rec.suite, {})[rec.id] = rec
    lab = by_suite.pop(DEFAULT_SUITE, {})
    if not by_suite:
        return None
    out = CellParity(cell)
    seen: set[str] = set()
    for suite, recs in by_suite.items():
        shared = sorted(lab.keys() & recs.keys())
        seen.update(shared)
        for test_id in shared:
            out.add(suite, lab[test_id], recs[test_id])
        out.only[suite] = sorted(recs.keys() - lab.keys())
    out.only[DEFAULT_SUITE] = sorted(lab.keys() - seen)
    return out


def run_parity(run: RunData) -> list[CellParity]:
    return [p for p in (cell_parity(c.name, c.records) for c in run.cells) if p is not None]


def judge(p: CellParity | None, mode: str) -> tuple[str | None, list[str]]:
    """A cell's parity line for summary.json (None: it ran no C suite and parity is no
    gate), and why parity fails the cell when the scenario makes it a gate."""
    if mode != GATE:
        return (f"{mode}: {line(p)}" if p is not None else None), []
    if p is None or not p.shared:
        nothing = "parity gate: no test id that both the lab's payload and a C suite produced"
        return f"{mode}: {line(p) if p is not None else 'no C suite results'}", [nothing]
    failures = [f"parity gate: {d.id}: lab {d.lab}, {d.suite} {d.other}" for d in p.unexplained]
    return f"{mode}: {line(p)}", failures


def line(p: CellParity) -> str:
    only = "".join(f"; only {suite} {len(ids)}" for suite, ids in p.only.items() if ids)
    explained = len(p.disagree) - len(p.unexplained)
    return (
        f"{p.shared} shared ids: {p.agree} agree, {len(p.disagree)} differ "
        f"({explained} explained, {len(p.unexplained)} unexplained){only}"
    )


def table(p: CellParity) -> list[tuple[Pair, int]]:
    """The pairs, per suite: agreeing ones first, then the most frequent."""
    return sorted(p.pairs.items(), key=lambda kv: (kv[0].suite, not kv[0].agree, -kv[1], kv[0].lab))


def to_json(cells: list[CellParity]) -> dict[str, Any]:
    return {
        "cells": {
            p.cell: {
                "shared": p.shared,
                "agree": p.agree,
                "differ": len(p.disagree),
                "explained": len(p.disagree) - len(p.unexplained),
                "unexplained": len(p.unexplained),
                "pairs": [asdict(pair) | {"count": n} for pair, n in table(p)],
                "disagree": [asdict(d) for d in p.disagree],
                "only": p.only,
            }
            for p in cells
        },
        "unexplained": sum(len(p.unexplained) for p in cells),
    }


def render(cells: list[CellParity]) -> str:
    if not cells:
        return "no cell ran a C suite beside the lab's payload (payload.suites)"
    lines = []
    for p in cells:
        lines.append(f"{p.cell}: {line(p)}")
        rows = [("suite", "lab", "other", "ids", "")] + [
            (pair.suite, pair.lab, pair.other, str(n), "agree" if pair.agree else "differ")
            for pair, n in table(p)
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            cols = [r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2])]
            lines.append("  " + "  ".join([*cols, r[3].rjust(widths[3]), r[4]]).rstrip())
        for d in p.disagree:
            why = f"explained: {d.explained_by}" if d.explained_by else "UNEXPLAINED"
            lines.append(f"  {d.id}: lab {d.lab}, {d.suite} {d.other} ({why})")
        for suite, ids in p.only.items():
            if ids:
                lines.append(
                    f"  only {suite}: {len(ids)} ({', '.join(ids[:5])}{' ...' * (len(ids) > 5)})"
                )
    return "\n".join(lines)
