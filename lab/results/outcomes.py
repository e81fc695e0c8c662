"""What a test can come to, and every class of outcomes the lab judges or shows by: the one
place they are defined (tests/unit/test_outcomes.py holds every other module to that).

A RAW outcome is what the test itself came to; an expectation (a scenario's known failure)
rewrites a failed one (fail or error) to xfail and a pass to xpass, and the record keeps
the raw one beside it. Gates judge raw outcomes; xfail and xpass can also be raw: TAP's own
XFAIL/TODO directives (and pytest's xfail marker) make them in the guest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final, Literal, get_args

# The order is summary.json's (a cell's `counts`). Records keep plain strings (they are read
# back from a run's files), so the classes and maps below take any str.
Outcome = Literal["pass", "fail", "skip", "xfail", "xpass", "error", "notrun"]
ALL: Final[tuple[Outcome, ...]] = get_args(Outcome)
PASS: Final = "pass"
FAIL: Final = "fail"
SKIP: Final = "skip"
XFAIL: Final = "xfail"
XPASS: Final = "xpass"
ERROR: Final = "error"
NOTRUN: Final = "notrun"  # planned, never started (the guest died or hung before it)

# The test came to a result, and not the expected one: a cell with one fails.
WRONG: Final = frozenset({FAIL, XPASS})
# The test came to no result of its own: it crashed, hung, made the kernel splat, or never
# ran. A cell with one is an error; a kernel alarm cannot make one any worse.
BROKEN: Final = frozenset({ERROR, NOTRUN})
# What fails a cell and a run (exit code 1), and what compare calls a new failure.
UNEXPECTED: Final = WRONG | BROKEN
# Raw outcomes in which the test failed, by assertion or crash: what an expectation
# declares (and rewrites to xfail), and what makes a bisect step bad.
FAILED: Final = frozenset({FAIL, ERROR})
# Raw outcomes in which nothing went wrong: the test passed, or skipped itself.
CLEAN: Final = frozenset({PASS, SKIP})
# What history counts as good, judged on raw outcomes: everything not unexpected (a raw
# xfail is a suite's own TAP XFAIL, never an expectation's).
GOOD: Final = frozenset(ALL) - UNEXPECTED
# The test really ran: going from one of these to a skip loses coverage.
RAN: Final = frozenset(ALL) - {SKIP, NOTRUN}

# What an xfail or an xpass was when no raw outcome was kept: pytest's own xfail marker
# makes an xfail of a fail (or an error) and an xpass of a pass.
RAW_OF_MARKED: Final[Mapping[str, str]] = {XFAIL: FAIL, XPASS: PASS}

# The order people read them in (the run's table, history's legend): pass, the
# unexpected, then the rest.
SHOWN_ORDER: Final[tuple[Outcome, ...]] = (PASS, FAIL, ERROR, NOTRUN, SKIP, XFAIL, XPASS)
# One letter per outcome for history's row of nights, and its legend.
SYMBOL: Final[Mapping[str, str]] = {
    PASS: "P",
    FAIL: "F",
    ERROR: "E",
    NOTRUN: "N",
    SKIP: "S",
    XFAIL: "x",
    XPASS: "U",
}
LEGEND: Final = ", ".join(f"{SYMBOL[o]} {'not run' if o == NOTRUN else o}" for o in SHOWN_ORDER)

# KCIDB has no expected failure: an xfail is a FAIL and an xpass a PASS (the test's
# `misc` says which was expected).
KCIDB_STATUS: Final[Mapping[str, str]] = {
    PASS: "PASS",
    FAIL: "FAIL",
    ERROR: "ERROR",
    NOTRUN: "MISS",
    SKIP: "SKIP",
    XFAIL: "FAIL",
    XPASS: "PASS",
}

# junit.xml's element for a testcase (None: a plain pass); the testsuite's counts are
# these elements'.
JUNIT_ELEMENT: Final[Mapping[str, str | None]] = {
    PASS: None,
    FAIL: "failure",
    XPASS: "failure",
    ERROR: "error",
    NOTRUN: "error",
    SKIP: "skipped",
    XFAIL: "skipped",
}
# Testcases that carry the console (system-err): the test went wrong itself (an xpass's
# console tells nothing).
JUNIT_CONSOLE: Final = BROKEN | {FAIL}


def count(outcomes: Iterable[str]) -> dict[str, int]:
    """How many of each outcome, every outcome counted (in summary.json's order)."""
    counts: dict[str, int] = dict.fromkeys(ALL, 0)
    for outcome in outcomes:
        counts[outcome] += 1
    return counts
