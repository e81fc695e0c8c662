"""Per-test triage: what each test came to, and what the kernel said while it ran.

The payload brackets every test with `/dev/kmsg` markers, so every kernel line in
dmesg or on the console belongs to the test that was running (or to none). A test
with a serious kernel alarm (panic, Oops, BUG, WARNING...) is an error whatever
its assertion said: the kernel broke, not the test. A test the guest died or hung
under is an error carrying the console's last lines; the collected tests after it
are `notrun`.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from lab.console import KERNEL_CRASHES, MARKER, Stop
from lab.scenario import Expectation
from lab.tap import OUTCOMES, TapParser

# (kind, pattern, serious): serious alarms make the test an error; the others are
# shown with it (a DMAR fault is what some tests provoke on purpose).
ALARMS = (
    ("panic", KERNEL_CRASHES["panic"], True),
    ("oops", KERNEL_CRASHES["oops"], True),
    ("bug", KERNEL_CRASHES["bug"], True),
    ("gpf", KERNEL_CRASHES["gpf"], True),
    # Wider than the console's crash line: lockdep's and KASAN's warnings count too.
    ("warning", re.compile(r"WARNING: .*"), True),
    ("hung task", re.compile(r"INFO: task .* blocked for more than .*"), True),
    ("rcu stall", re.compile(r"rcu: INFO: .*detected stalls.*"), True),
    (
        "iommu fault",
        re.compile(r"DMAR: \[DMA .*|AMD-Vi: .*IO_PAGE_FAULT.*|virtio_iommu.*fault.*"),
        False,
    ),
    ("vfio", re.compile(r"(?:^|\]\s*)((?:vfio(?!-lab)[-_\w]*|iommufd)\b.*)"), False),
)
UNEXPECTED = ("fail", "error", "xpass", "notrun")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# What XML 1.0 (and so HTML) can carry; a dying UART prints plenty that it cannot.
_UNPRINTABLE = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
SLICE_HEAD, SLICE_TAIL = 20, 40
NOT_KEYS = ("setup", "call", "teardown", "console")
CONSOLE_TAIL = 25


@dataclass
class TestRecord:
    name: str
    outcome: str
    reason: str = ""
    diagnostics: list[str] = field(default_factory=list)
    kernel: list[str] = field(default_factory=list)  # attributed alarms, "kind: line"
    dmesg: list[str] = field(default_factory=list)  # the kernel's lines while it ran
    console: list[str] = field(default_factory=list)  # the console while it ran
    expectation: dict[str, str] | None = None  # the known failure it matched

    @property
    def unexpected(self) -> bool:
        return self.outcome in UNEXPECTED

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


def printable(text: str) -> str:
    """Guest text made fit for XML and HTML: terminal colours dropped, control bytes as ?."""
    return _UNPRINTABLE.sub("?", _ANSI.sub("", text))


def by_test(lines: list[str]) -> dict[str, list[str]]:
    """Kernel lines by the test that was running when they were printed; the key ""
    holds those outside every test (boot, binding, between tests)."""
    out: dict[str, list[str]] = {}
    running = ""
    for line in lines:
        if m := MARKER.search(line):
            running = m.group("name") if m.group("what") == "start" else ""
            continue
        out.setdefault(running, []).append(line)
    return out


def last_running(lines: list[str]) -> str | None:
    """The test whose start marker has no end marker: the one a dead guest was running."""
    running: str | None = None
    for line in lines:
        if m := MARKER.search(line):
            running = m.group("name") if m.group("what") == "start" else None
    return running


def alarms(lines: list[str]) -> list[tuple[str, str, bool]]:
    found = []
    for line in lines:
        for kind, pattern, serious in ALARMS:
            if m := pattern.search(line):
                found.append((kind, (m.group(m.lastindex or 0)).strip(), serious))
                break
    return found


def outside_alarms(lines: list[str]) -> list[str]:
    """Serious kernel alarms outside every test (boot, binding): the cell's problems."""
    outside = by_test(lines).get("", [])
    return [f"kernel {kind} outside any test: {line}" for kind, line, bad in alarms(outside) if bad]


def cap(lines: list[str]) -> list[str]:
    if len(lines) <= SLICE_HEAD + SLICE_TAIL:
        return lines
    skipped = len(lines) - SLICE_HEAD - SLICE_TAIL
    return [*lines[:SLICE_HEAD], f"[... {skipped} lines ...]", *lines[-SLICE_TAIL:]]


def collected(tap: TapParser) -> list[str]:
    prefix = "collected: "
    return [n[len(prefix) :] for n in tap.notes if n.startswith(prefix)]


def records(
    tap: TapParser, dmesg: list[str] | None, console: list[str], stop: Stop | None
) -> list[TestRecord]:
    """One record per test: reported, interrupted, or never run. `dmesg` is None when the
    guest could not give it (it died): the console then speaks for the kernel."""
    out = [TestRecord(name, r.outcome, r.reason, r.diagnostics + r.yaml) for name, r in tap.flat()]
    reported = {r.name for r in out}
    running = stop.test if stop is not None else None
    if stop is not None and running and running not in reported:
        tail = [f"console: {line}" for line in console[-CONSOLE_TAIL:]]
        out.append(TestRecord(running, "error", f"{stop.kind}: {stop.message}", tail))
        reported.add(running)
    names = collected(tap)
    missing = [n for n in names if n not in reported]
    if not names and tap.plan is not None:
        missing = [f"(test {i})" for i in range(len(tap.results) + 1, tap.plan + 1)]
    why = f"not run: the guest stopped during {running}" if running else "not run"
    out += [TestRecord(name, "notrun", why) for name in missing]
    _attribute(out, by_test(dmesg if dmesg is not None else console), by_test(console))
    return out


def _attribute(
    out: list[TestRecord], kernel: dict[str, list[str]], console: dict[str, list[str]]
) -> None:
    for rec in out:
        lines = kernel.get(rec.name, [])
        rec.dmesg = cap(lines)
        rec.console = cap(console.get(rec.name, []))
        found = alarms(lines if lines else console.get(rec.name, []))
        rec.kernel = [f"{kind}: {line}" for kind, line, _ in found]
        serious = [(kind, line) for kind, line, s in found if s]
        if serious and rec.outcome not in ("error", "notrun"):
            was = f" (the test itself: {rec.outcome})"
            rec.reason = f"kernel {serious[0][0]} during the test: {serious[0][1]}{was}"
            rec.outcome = "error"


def expect(recs: list[TestRecord], cell: str, expectations: list[Expectation]) -> None:
    """Known failures: a matching test that fails or errs is XFAIL, one that passes XPASS."""
    for rec in recs:
        exp = next(
            (
                e
                for e in expectations
                if fnmatch.fnmatchcase(rec.name, e.test) and fnmatch.fnmatchcase(cell, e.cells)
            ),
            None,
        )
        if exp is None:
            continue
        rec.expectation = asdict(exp)
        if rec.outcome in ("fail", "error"):
            was = f" (was {rec.outcome}: {rec.reason})" if rec.reason else f" (was {rec.outcome})"
            rec.outcome, rec.reason = "xfail", f"known failure: {exp.reason}{was}"
        elif rec.outcome == "pass":
            rec.outcome, rec.reason = "xpass", f"expected to fail ({exp.reason}), but passed"


def counts(recs: list[TestRecord]) -> dict[str, int]:
    c = dict.fromkeys(OUTCOMES, 0)
    for r in recs:
        if "/" not in r.name:  # a subtest's result is its parent's business
            c[r.outcome] += 1
    return c


def verdict(recs: list[TestRecord], problems: list[str]) -> str:
    """pass: nothing unexpected; fail: an unexpected fail or pass; error: the rest."""
    outcomes = {r.outcome for r in recs}
    if problems or not recs or outcomes & {"error", "notrun"}:
        return "error"
    if outcomes & {"fail", "xpass"}:
        return "fail"
    return "pass"
