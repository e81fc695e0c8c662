"""Parity: do the lab's payload and the kernel's own C suites give the same verdict on
the same guest? Per cell, every test id both produced, with both verdicts.

Test ids are upstream's in every suite (`rec.id`), so the lab's record of
`vfio_dma_mapping_test.iommufd_anonymous.dma_map_unmap` meets kselftest-vfio's. Two
records agree when their outcomes are the same. A disagreement is explained when a
scenario expectation matched one of the two (a known difference, declared with its
reason); any other is unexplained, and `vfio-lab parity` exits 1 on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lab.results.records import TestRecord
from lab.results.rundir import CellData, RunData
from lab.spec.suites import DEFAULT_SUITE

PARITY = "parity.json"


@dataclass
class Disagreement:
    id: str
    lab: str  # the lab's outcome
    other: str  # the C suite's outcome
    suite: str
    explained_by: str = ""  # the reason of the expectation that explains it


@dataclass
class CellParity:
    cell: str
    shared: int = 0
    agree: int = 0
    disagree: list[Disagreement] = field(default_factory=list)
    only: dict[str, list[str]] = field(default_factory=dict)  # suite -> ids no other has

    @property
    def unexplained(self) -> list[Disagreement]:
        return [d for d in self.disagree if not d.explained_by]


def cell_parity(cell: CellData) -> CellParity | None:
    """None when the cell ran the lab's payload alone (or no C suite at all)."""
    by_suite: dict[str, dict[str, TestRecord]] = {}
    for rec in cell.records:
        if "/" not in rec.id:  # a subtest belongs to its parent's verdict
            by_suite.setdefault(rec.suite, {})[rec.id] = rec
    lab = by_suite.pop(DEFAULT_SUITE, {})
    if not by_suite:
        return None
    out = CellParity(cell.name)
    seen: set[str] = set()
    for suite, recs in by_suite.items():
        shared = sorted(lab.keys() & recs.keys())
        seen.update(shared)
        out.shared += len(shared)
        for test_id in shared:
            mine, theirs = lab[test_id], recs[test_id]
            if mine.outcome == theirs.outcome:
                out.agree += 1
                continue
            known = mine.expectation or theirs.expectation
            why = known["reason"] if known else ""
            out.disagree.append(Disagreement(test_id, mine.outcome, theirs.outcome, suite, why))
        out.only[suite] = sorted(recs.keys() - lab.keys())
    out.only[DEFAULT_SUITE] = sorted(lab.keys() - seen)
    return out


def run_parity(run: RunData) -> list[CellParity]:
    return [p for p in (cell_parity(c) for c in run.cells) if p is not None]


def to_json(cells: list[CellParity]) -> dict[str, Any]:
    return {
        "cells": {
            p.cell: {
                "shared": p.shared,
                "agree": p.agree,
                "disagree": [asdict(d) for d in p.disagree],
                "unexplained": len(p.unexplained),
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
        lines.append(
            f"{p.cell}: {p.shared} shared, {p.agree} agree, {len(p.disagree)} disagree "
            f"({len(p.unexplained)} unexplained)"
        )
        for d in p.disagree:
            why = f"explained: {d.explained_by}" if d.explained_by else "UNEXPLAINED"
            lines.append(f"  {d.id}: lab {d.lab}, {d.suite} {d.other} ({why})")
        for suite, ids in p.only.items():
            if ids:
                lines.append(
                    f"  only {suite}: {len(ids)} ({', '.join(ids[:5])}{' ...' * (len(ids) > 5)})"
                )
    return "\n".join(lines)
