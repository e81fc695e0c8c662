"""Test records: what each test of a cell came to, with what the kernel said meanwhile."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lab.model.suites import DEFAULT_SUITE
from lab.results.outcomes import UNEXPECTED

SLOWEST = 10  # how many of a cell's slowest tests the reports list

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# What XML 1.0 (and so HTML) can carry; a dying UART prints plenty that it cannot.
_UNPRINTABLE = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
NOT_KEYS = ("setup", "call", "teardown", "console")
# The kind of attributed kernel line that VFIO and IOMMUFD print themselves (see
# lab.run.triage.ALARMS). Most are what every test makes them say (a vfio-pci reset, a
# device enabled): such a line deserves a look only when it tells of trouble.
DRIVER_KIND = "vfio"
_TROUBLE = re.compile(
    r"\b(?:errors?|err|fail(?:s|ed|ure)?|unable|cannot|can't|could ?n[o']t|timed out|"
    r"time-?out|denied|refused|leak(?:s|ed)?|corrupt\w*|warn\w*)\b",
    re.IGNORECASE,
)


def notable(line: str) -> bool:
    """Whether an attributed kernel line (`kind: text`) deserves a look: a splat, a
    warning, an IOMMU fault, or a driver line telling of trouble; not a routine one."""
    kind, _, text = line.partition(": ")
    return kind != DRIVER_KIND or _TROUBLE.search(text) is not None


@dataclass
class TestRecord:
    __test__ = False  # a record, not a pytest test class

    name: str
    outcome: str
    reason: str = ""
    diagnostics: list[str] = field(default_factory=list)
    kernel: list[str] = field(default_factory=list)  # attributed alarms, "kind: line"
    dmesg: list[str] = field(default_factory=list)  # the kernel's lines while it ran
    console: list[str] = field(default_factory=list)  # the console while it ran
    expectation: dict[str, str] | None = None  # the known failure it matched
    suite: str = DEFAULT_SUITE  # which suite ran it
    # What the test came to itself, kept beside an outcome that an expectation it matched
    # or pytest's xfail marker in the guest made of it.
    raw: str | None = None
    duration_s: float | None = None  # its wall time as the guest measured it; None: unknown

    @property
    def id(self) -> str:
        """The test's own id: a C suite's records are named `suite:id`, so that they never
        collide with the lab's records of the same upstream id."""
        return self.name.removeprefix(f"{self.suite}:")

    @property
    def raw_outcome(self) -> str | None:
        """What the test came to before expectations and xfail markers: the kept `raw`, else
        the outcome of a record no expectation rewrote (a marked xfail of a run from before
        the guest said what it was stays an xfail). None: one matched, but the record (from
        before vfio-lab kept `raw`) does not say whether the test failed or crashed."""
        if self.raw is not None:
            return self.raw
        return self.outcome if self.expectation is None else None

    @property
    def unexpected(self) -> bool:
        return self.outcome in UNEXPECTED

    @property
    def notable_kernel(self) -> list[str]:
        """The attributed kernel lines that deserve a look (see `notable`)."""
        return [line for line in self.kernel if notable(line)]

    @property
    def routine_kernel(self) -> list[str]:
        """The attributed kernel lines every test has: shown on demand only."""
        return [line for line in self.kernel if not notable(line)]

    def diagnostic_map(self) -> dict[str, str]:
        """The `key: value` diagnostics (iopte_size, container_provider, errno...), not the
        failure text the payload prefixes with its phase, nor the console lines."""
        pairs = (d.split(": ", 1) for d in self.diagnostics if ": " in d)
        return {k: v for k, v in pairs if re.fullmatch(r"[\w.-]+", k) and k not in NOT_KEYS}

    @staticmethod
    def from_dict(d: Any) -> TestRecord:
        if not isinstance(d, dict):
            raise TypeError(f"a test record is an object, not {type(d).__name__}")
        return TestRecord(**d)


def slowest(recs: list[TestRecord], n: int = SLOWEST) -> list[TestRecord]:
    """The n tests that took longest, slowest first (ties by name, so reports are stable).
    Tests without a duration (not run, from an older run) are left out, and so are
    subtests: their time is their parent's."""
    timed = [r for r in recs if r.duration_s is not None and "/" not in r.name]
    return sorted(timed, key=lambda r: (-(r.duration_s or 0.0), r.name))[:n]


def printable(text: str) -> str:
    """Guest text made fit for XML and HTML: terminal colours dropped, control bytes as ?."""
    return _UNPRINTABLE.sub("?", _ANSI.sub("", text))
