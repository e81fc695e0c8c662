"""A line-fed, tolerant TAP 13 parser for the payload's kselftest-style output.

Feed it lines as they come; it skips garbage, keeps each test's `#` diagnostics,
and reports what is missing (a plan it never saw, tests the plan promised).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_RESULT = re.compile(r"^(?P<ok>ok|not ok)\b\s*(?P<num>\d+)?\s*(?:-\s*)?(?P<rest>.*)$")
_PLAN = re.compile(r"^1\.\.(?P<n>\d+)")
_DIRECTIVE = re.compile(
    r"\s+#\s*(?P<kind>SKIP|TODO|XFAIL|ERROR)\b\s*(?P<reason>.*)$", re.IGNORECASE
)

OUTCOMES = ("pass", "fail", "skip", "xfail", "xpass", "error")


@dataclass
class TapResult:
    number: int
    name: str
    outcome: str  # one of OUTCOMES
    reason: str = ""
    diagnostics: list[str] = field(default_factory=list)

    def diagnostic(self, key: str) -> str | None:
        """The value of a `key: value` diagnostic line, if the test recorded one."""
        prefix = f"{key}: "
        return next((d[len(prefix) :] for d in self.diagnostics if d.startswith(prefix)), None)


def _outcome(ok: bool, directive: str | None) -> str:
    if directive == "SKIP":
        return "skip"
    if directive in ("TODO", "XFAIL"):
        return "xpass" if ok else "xfail"
    if directive == "ERROR":
        return "error"
    return "pass" if ok else "fail"


class TapParser:
    def __init__(self) -> None:
        self.plan: int | None = None
        self.results: list[TapResult] = []
        self.bailed_out: str | None = None
        self.garbage = 0
        self._pending: list[str] = []

    def feed(self, line: str) -> None:
        line = line.rstrip("\r\n")
        stripped = line.strip()
        if not stripped or stripped.startswith("TAP version"):
            return
        if m := _PLAN.match(stripped):
            self.plan = int(m.group("n"))
        elif stripped.startswith("#"):
            self._pending.append(stripped.lstrip("#").strip())
        elif stripped.startswith("Bail out!"):
            self.bailed_out = stripped[len("Bail out!") :].strip() or "no reason given"
        elif m := _RESULT.match(stripped):
            self._add(m)
        else:
            self.garbage += 1

    def _add(self, m: re.Match[str]) -> None:
        rest = m.group("rest")
        directive = reason = None
        if d := _DIRECTIVE.search(rest):
            directive, reason = d.group("kind").upper(), d.group("reason").strip()
            rest = rest[: d.start()]
        number = int(m.group("num")) if m.group("num") else len(self.results) + 1
        self.results.append(
            TapResult(
                number=number,
                name=rest.strip() or f"test {number}",
                outcome=_outcome(m.group("ok") == "ok", directive),
                reason=reason or "",
                diagnostics=self._pending,
            )
        )
        self._pending = []

    def problems(self) -> list[str]:
        """What is missing or wrong, in words, for reports and verdicts."""
        out = []
        if self.plan is None:
            out.append("no TAP plan (1..N): the payload did not start or its output is lost")
        elif len(self.results) < self.plan:
            out.append(
                f"{self.plan - len(self.results)} of {self.plan} planned tests did not report"
            )
        if self.bailed_out:
            out.append(f"bailed out: {self.bailed_out}")
        return out

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(OUTCOMES, 0)
        for r in self.results:
            counts[r.outcome] += 1
        if self.plan is not None:
            counts["error"] += max(0, self.plan - len(self.results))
        return counts


def parse_text(text: str) -> TapParser:
    parser = TapParser()
    for line in text.splitlines():
        parser.feed(line)
    return parser
