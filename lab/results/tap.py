"""A line-fed, tolerant parser for TAP 13, TAP 14 and KTAP.

Feed it lines as they come (from a file or a live stream); it never raises on what a
guest prints. It keeps each test's `#` diagnostics (the lines before its result line,
kselftest style) and YAML block, nests subtests by indentation (four spaces a level,
as TAP 14 and KTAP write them), skips garbage, and says what is missing: a plan it never
saw, tests the plan promised, output that ends inside subtests or a YAML block.
A test's wall time is the `duration_ms` key of its YAML block (TAP 13's convention, as
node-tap writes it), which the guest's runners write after every result; its
`raw_outcome` key is what a test the pytest plugin's xfail marker judged came to itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from lab.results.outcomes import ERROR, FAIL, NOTRUN, PASS, SKIP, XFAIL, XPASS, Outcome, count

_VERSION = re.compile(r"^(?:TAP version \d+|KTAP version \d+)$")
_PLAN = re.compile(r"^1\.\.(?P<n>\d+)\s*(?:#\s*(?P<skip>.*))?$")
_RESULT = re.compile(r"^(?P<ok>ok|not ok)\b\s*(?P<num>\d+)?\s*(?:-\s*)?(?P<rest>.*)$")
_SUBTEST = re.compile(r"^#\s*Subtest:\s*(?P<name>.*)$")
# A directive starts at the first `#` that is not escaped as `\#` (TAP 14).
_DIRECTIVE = re.compile(
    r"(?<!\\)#\s*(?P<kind>SKIP|TODO|XFAIL|ERROR)\b\s*(?P<reason>.*)$", re.IGNORECASE
)

# The header's announcement of a test to come. Before the plan they are the document's
# notes; so are they before the first result when the plan comes last (the C suites'
# runner announces what the programs listed, then reports, then plans).
COLLECTED = "collected: "
INDENT = 4
# At the YAML block's own level only: a nested `duration_ms` belongs to something else.
_DURATION = re.compile(r"^duration_ms:\s*(?P<ms>\d+(?:\.\d+)?)\s*$")
# What a test the pytest plugin's xfail marker judged came to itself.
_RAW = re.compile(rf"^raw_outcome:\s*(?P<raw>{'|'.join((PASS, FAIL, ERROR))})\s*$")


@dataclass
class TapResult:
    number: int
    name: str
    outcome: Outcome
    reason: str = ""
    diagnostics: list[str] = field(default_factory=list)
    yaml: list[str] = field(default_factory=list)
    subtests: list[TapResult] = field(default_factory=list)
    duration_s: float | None = None  # from the YAML block's duration_ms
    raw: Outcome | None = None  # from its raw_outcome: an xfail marker's test, itself

    def diagnostic(self, key: str) -> str | None:
        """The value of a `key: value` diagnostic line, if the test recorded one."""
        prefix = f"{key}: "
        return next((d[len(prefix) :] for d in self.diagnostics if d.startswith(prefix)), None)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"number": self.number, "name": self.name, "outcome": self.outcome}
        for key in ("reason", "diagnostics", "yaml"):
            if getattr(self, key):
                d[key] = getattr(self, key)
        if self.subtests:
            d["subtests"] = [s.to_dict() for s in self.subtests]
        if self.duration_s is not None:
            d["duration_s"] = self.duration_s
        if self.raw is not None:
            d["raw"] = self.raw
        return d


def _outcome(ok: bool, directive: str | None) -> Outcome:
    if directive == "SKIP":
        return SKIP
    if directive in ("TODO", "XFAIL"):
        return XPASS if ok else XFAIL
    if directive == "ERROR":
        return ERROR
    return PASS if ok else FAIL


@dataclass
class _Level:
    """One nesting depth: the top-level document, or the subtests of a test to come."""

    indent: int
    name: str | None = None  # from `# Subtest: NAME`
    plan: int | None = None
    plan_skip: str | None = None
    results: list[TapResult] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # diagnostics for the next result
    notes: list[str] = field(default_factory=list)  # diagnostics before the plan
    children: _Level | None = None  # finished subtests waiting for their result line


class TapParser:
    def __init__(self) -> None:
        self.root = _Level(indent=0)
        self.stack = [self.root]
        self.version: str | None = None
        self.bailed_out: str | None = None
        self.garbage = 0
        self.orphans = 0  # subtests whose parent never reported a result
        self._yaml: tuple[TapResult, int] | None = None
        self._next_name: str | None = None

    # -- the document -----------------------------------------------------------------
    @property
    def plan(self) -> int | None:
        return self.root.plan

    @property
    def results(self) -> list[TapResult]:
        return self.root.results

    @property
    def notes(self) -> list[str]:
        """Diagnostics before the plan: the document's header (e.g. the collected tests)."""
        return self.root.notes

    @property
    def collected(self) -> list[str]:
        """The tests the header announced (`# collected: NAME`), reported or not."""
        return [n[len(COLLECTED) :] for n in self.notes if n.startswith(COLLECTED)]

    def flat(self) -> Iterator[tuple[str, TapResult]]:
        """Every result with its full name; a subtest is `parent/child`."""

        def walk(prefix: str, results: list[TapResult]) -> Iterator[tuple[str, TapResult]]:
            for r in results:
                name = f"{prefix}{r.name}"
                yield name, r
                yield from walk(f"{name}/", r.subtests)

        return walk("", self.results)

    # -- feeding ----------------------------------------------------------------------
    def feed(self, line: str) -> None:
        raw = line.rstrip("\r\n").replace("\t", "    ")
        stripped = raw.strip()
        if self._yaml is not None:
            self._feed_yaml(self._yaml, raw, stripped)
            return
        if not stripped:
            return
        indent = len(raw) - len(raw.lstrip(" "))
        if stripped == "---" and (last := self._last_result()) is not None:
            self._yaml = (last, indent)
            return
        if self._structural(stripped):
            self._settle(indent)
            self._structure(self.stack[-1], stripped)
        elif stripped.startswith("#"):
            # Only TAP lines move between levels: a stray line never closes subtests.
            level = next(lv for lv in reversed(self.stack) if lv.indent <= indent)
            text = stripped.lstrip("#").strip()
            header = level is self.root and level.plan is None and not level.results
            (level.notes if header and text.startswith(COLLECTED) else level.pending).append(text)
        else:
            self.garbage += 1

    @staticmethod
    def _structural(stripped: str) -> bool:
        return bool(
            _VERSION.match(stripped)
            or _PLAN.match(stripped)
            or _RESULT.match(stripped)
            or _SUBTEST.match(stripped)
            or stripped.startswith("Bail out!")
        )

    def _settle(self, indent: int) -> None:
        """Move to the level this indentation names: deeper opens subtests, shallower
        closes them (they then wait for their parent's result line)."""
        while len(self.stack) > 1 and indent < self.stack[-1].indent:
            done = self.stack.pop()
            parent = self.stack[-1]
            if parent.children is not None:
                self.orphans += 1
            parent.children = done
        top = self.stack[-1]
        if indent >= top.indent + INDENT:
            self.stack.append(_Level(indent=indent, name=self._next_name))
            self._next_name = None

    def _structure(self, top: _Level, stripped: str) -> None:
        if _VERSION.match(stripped):
            if top is self.root:
                self.version = stripped
        elif m := _PLAN.match(stripped):
            top.plan = int(m.group("n"))
            top.plan_skip = m.group("skip")
            top.notes += top.pending
            top.pending = []
        elif m := _SUBTEST.match(stripped):
            # TAP 14 may write it at the parent's indentation, KTAP at the child's.
            if top is self.root or top.results or top.plan is not None:
                self._next_name = m.group("name").strip()
            else:
                top.name = m.group("name").strip()
        elif stripped.startswith("Bail out!"):
            self.bailed_out = stripped[len("Bail out!") :].strip() or "no reason given"
        elif m := _RESULT.match(stripped):
            self._add(top, m)

    def _add(self, top: _Level, m: re.Match[str]) -> None:
        rest = m.group("rest")
        directive = reason = None
        if d := _DIRECTIVE.search(rest):
            directive, reason = d.group("kind").upper(), d.group("reason").strip()
            rest = rest[: d.start()]
        elif (hash_at := re.search(r"(?<!\\)#", rest)) is not None:
            rest = rest[: hash_at.start()]  # a comment, not a directive
        number = int(m.group("num")) if m.group("num") else len(top.results) + 1
        children, top.children = top.children, None
        top.results.append(
            TapResult(
                number=number,
                name=rest.strip().replace("\\#", "#") or f"test {number}",
                outcome=_outcome(m.group("ok") == "ok", directive),
                reason=reason or "",
                diagnostics=top.pending,
                subtests=children.results if children else [],
            )
        )
        top.pending = []

    def _feed_yaml(self, block: tuple[TapResult, int], raw: str, stripped: str) -> None:
        result, indent = block
        line = raw[indent:] if raw[:indent].isspace() else raw.strip()
        if stripped == "...":
            self._yaml = None
        elif (m := _DURATION.match(line)) and result.duration_s is None:
            # Kept apart from the YAML: the record's diagnostics would differ on every run.
            result.duration_s = round(float(m.group("ms")) / 1000, 6)
        elif (m := _RAW.match(line)) and result.raw is None:
            result.raw = cast(Outcome, m.group("raw"))
        else:
            result.yaml.append(line)

    def _last_result(self) -> TapResult | None:
        top = self.stack[-1]
        return top.results[-1] if top.results and not top.pending else None

    # -- verdicts -----------------------------------------------------------------------
    def problems(self) -> list[str]:
        """What is missing or wrong, in words, for reports and verdicts."""
        out = []
        if self.plan is None:
            out.append("no TAP plan (1..N): the payload did not start or its output is lost")
        elif len(self.results) < self.plan:
            out.append(
                f"{self.plan - len(self.results)} of {self.plan} planned tests did not report"
            )
        elif len(self.results) > self.plan:
            out.append(f"{len(self.results)} tests reported, but the plan said {self.plan}")
        if len(self.stack) > 1 or self.root.children is not None:
            inner = self.stack[-1] if len(self.stack) > 1 else self.root.children
            name = f" of {inner.name!r}" if inner and inner.name else ""
            out.append(f"the output ends inside the subtests{name}: it was cut short")
        if self.orphans:
            out.append(f"{self.orphans} group(s) of subtests had no result line of their own")
        if self._yaml is not None:
            out.append("the output ends inside a YAML block: it was cut short")
        if self.bailed_out:
            out.append(f"bailed out: {self.bailed_out}")
        return out

    def counts(self) -> dict[str, int]:
        counts = count(r.outcome for r in self.results)
        reported = {r.name for r in self.results}
        announced = len([n for n in self.collected if n not in reported])
        planned = max(0, self.plan - len(self.results)) if self.plan is not None else 0
        counts[NOTRUN] += max(announced, planned)
        return counts

    def to_dict(self) -> dict[str, Any]:
        """The whole parse, for golden files and debugging."""
        return {
            "version": self.version,
            "plan": self.plan,
            "notes": self.notes,
            "results": [r.to_dict() for r in self.results],
            "bailed_out": self.bailed_out,
            "garbage": self.garbage,
            "problems": self.problems(),
        }


def parse_text(text: str) -> TapParser:
    parser = TapParser()
    for line in text.splitlines():
        parser.feed(line)
    return parser
