"""`vfio-lab compare OLD NEW`: what changed between two runs, test by test and cell by cell.

Every test lands in at most one list. Regressions, the exit code a nightly job gates on:
new failures and errors, cells that stopped booting, cells the new run promised and
never ran (`missing`: a merged night whose shard never came), and lost coverage: a test
that ran and now skips (a kernel that lost /dev/iommu), a test or a cell that vanished.
Lost coverage can be accepted (`--accept-lost`) when it was meant, e.g. a smaller
matrix; a missing cell cannot: nobody meant it.

An old run that promised a cell and never ran it (killed, or failed before it) is no
baseline for that cell: compare refuses it by name rather than call the new run's
results "appeared" and the comparison clean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lab.core.errors import UsageError
from lab.results.outcomes import RAN, SKIP, UNEXPECTED
from lab.results.records import TestRecord
from lab.results.rundir import RunData


@dataclass(frozen=True)
class Change:
    cell: str
    test: str
    old: str | None  # outcome, None where the test was absent
    new: str | None
    detail: str = ""

    def line(self) -> str:
        moved = f"{self.old or 'absent'} -> {self.new or 'absent'}"
        detail = f": {self.detail}" if self.detail else ""
        return f"  {self.cell}  {self.test}  {moved}{detail}"


@dataclass
class Comparison:
    new_failures: list[Change] = field(default_factory=list)
    fixes: list[Change] = field(default_factory=list)
    other_changes: list[Change] = field(default_factory=list)
    # Tests that ran before and now skip, or are gone from a cell that is still there.
    lost_coverage: list[Change] = field(default_factory=list)
    changed_diagnostics: list[Change] = field(default_factory=list)
    appeared: list[Change] = field(default_factory=list)
    cells_appeared: list[str] = field(default_factory=list)
    cells_vanished: list[str] = field(default_factory=list)
    # Cells whose new run ended in an infrastructure error (no tests to compare at all):
    # a regression when the old run of that cell had none.
    cells_broken: list[str] = field(default_factory=list)
    cells_still_broken: list[str] = field(default_factory=list)
    # Cells the new run promised and never ran: a regression unless the old run's were
    # missing too.
    cells_missing: list[str] = field(default_factory=list)
    cells_still_missing: list[str] = field(default_factory=list)
    accept_lost: bool = False

    @property
    def lost(self) -> bool:
        return bool(self.lost_coverage or self.cells_vanished)

    @property
    def regressions(self) -> bool:
        lost = self.lost and not self.accept_lost
        return bool(self.new_failures or self.cells_broken or self.cells_missing or lost)


def compare(old: RunData, new: RunData, accept_lost: bool = False) -> Comparison:
    result = Comparison(accept_lost=accept_lost)
    old_cells = {c.name: c.by_name() for c in old.cells}
    new_cells = {c.name: c.by_name() for c in new.cells}
    _refuse_without_baseline(old, new_cells)
    never_ran = new.never_ran
    result.cells_vanished = [c for c in old_cells if c not in new_cells and c not in never_ran]
    for cell in never_ran:
        missing = result.cells_still_missing if cell in old.never_ran else result.cells_missing
        missing.append(cell)
    result.cells_appeared = [c for c in new_cells if c not in old_cells]
    _infra(result, old, new)
    for cell, after in new_cells.items():
        if cell in old_cells:
            _compare_cell(result, cell, old_cells[cell], after)
    return result


def _refuse_without_baseline(old: RunData, new_cells: dict[str, Any]) -> None:
    if unran := [c for c in old.never_ran if c in new_cells]:
        code = old.summary.get("exit_code")
        ended = "never finished" if code is None else f"ended with exit code {code}"
        raise UsageError(
            f"compare: {old.dir} promised cells it has no results for, so it is no baseline "
            f"for them: {', '.join(unran)} (that run {ended}); compare against a run that "
            "has them"
        )


def _infra(out: Comparison, old: RunData, new: RunData) -> None:
    was_broken = {c.name for c in old.cells if c.summary.get("infra_error")}
    for cell in new.cells:
        if error := cell.summary.get("infra_error"):
            line = f"{cell.name}: {str(error).splitlines()[0]}"
            broken = out.cells_still_broken if cell.name in was_broken else out.cells_broken
            broken.append(line)


def _compare_cell(
    out: Comparison, cell: str, before: dict[str, TestRecord], after: dict[str, TestRecord]
) -> None:
    out.lost_coverage += [
        Change(cell, t, r.outcome, None) for t, r in before.items() if t not in after
    ]
    for test, new in after.items():
        old = before.get(test)
        if old is None:
            target = out.new_failures if new.unexpected else out.appeared
            target.append(Change(cell, test, None, new.outcome, new.reason))
        elif old.outcome != new.outcome:
            _outcome_change(out, Change(cell, test, old.outcome, new.outcome, new.reason))
        else:
            out.changed_diagnostics += _diagnostic_changes(cell, test, old, new)


def _outcome_change(out: Comparison, change: Change) -> None:
    was_bad, is_bad = change.old in UNEXPECTED, change.new in UNEXPECTED
    if is_bad and not was_bad:
        out.new_failures.append(change)
    elif change.old in RAN and change.new == SKIP:
        out.lost_coverage.append(change)
    elif was_bad and not is_bad:
        out.fixes.append(change)
    else:
        out.other_changes.append(change)


def _diagnostic_changes(cell: str, test: str, old: TestRecord, new: TestRecord) -> list[Change]:
    a, b = old.diagnostic_map(), new.diagnostic_map()
    return [
        Change(cell, test, old.outcome, new.outcome, f"{k}: {a.get(k, '-')} -> {b.get(k, '-')}")
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def render(c: Comparison, old: RunData, new: RunData) -> str:
    lines = [f"compare {old.dir} -> {new.dir}"]
    for title, changes in (
        ("new failures and errors", c.new_failures),
        ("fixes", c.fixes),
        ("lost coverage: tests that ran and now skip or are gone", c.lost_coverage),
        ("other result changes", c.other_changes),
        ("changed diagnostics", c.changed_diagnostics),
        ("tests that appeared", c.appeared),
    ):
        if changes:
            lines.append(f"{title} ({len(changes)}):")
            lines += [ch.line() for ch in changes]
    for title, cells in (
        ("cells that appeared", c.cells_appeared),
        ("cells that vanished", c.cells_vanished),
        ("cells missing from the new run (promised, never ran)", c.cells_missing),
        ("cells still missing (promised, never ran)", c.cells_still_missing),
    ):
        if cells:
            lines.append(f"{title}: {', '.join(cells)}")
    for title, broken in (
        ("cells now failing for infrastructure reasons", c.cells_broken),
        ("cells still failing for infrastructure reasons", c.cells_still_broken),
    ):
        if broken:
            lines.append(f"{title} ({len(broken)}):")
            lines += [f"  {b}" for b in broken]
    if len(lines) == 1:
        lines.append("no differences")
    if c.lost and c.accept_lost:
        lines.append("lost coverage accepted (--accept-lost)")
    lines.append("regressions: yes" if c.regressions else "regressions: none")
    return "\n".join(lines)
