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
from collections.abc import Sequence
from dataclasses import asdict

from lab.model.scenario import Expectation
from lab.model.suites import DEFAULT_SUITE, SUITES
from lab.model.variants import IOMMU_MODELS
from lab.results.outcomes import (
    BROKEN,
    ERROR,
    FAILED,
    NOTRUN,
    PASS,
    RAW_OF_MARKED,
    WRONG,
    XFAIL,
    XPASS,
    count,
)
from lab.results.records import DRIVER_KIND, TestRecord
from lab.results.tap import TapParser
from lab.vm.console import KERNEL_CRASHES, MARKER, Stop

# A DMA fault as any model in the registry logs it.
IOMMU_FAULT = re.compile("|".join(f"(?:{IOMMU_MODELS[m].fault_log})" for m in IOMMU_MODELS))
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
    ("iommu fault", IOMMU_FAULT, False),
    (DRIVER_KIND, re.compile(r"(?:^|\]\s*)((?:vfio(?!-lab)[-_\w]*|iommufd)\b.*)"), False),
)
SLICE_HEAD, SLICE_TAIL = 20, 40
CONSOLE_TAIL = 25


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


def records(
    tap: TapParser,
    dmesg: list[str] | None,
    console: list[str],
    stop: Stop | None,
    suite: str = DEFAULT_SUITE,
) -> list[TestRecord]:
    """One record per test of one suite: reported, interrupted, or never run. `dmesg` is
    None when the guest could not give it (it died): the console then speaks for the kernel."""
    out = [
        TestRecord(
            name,
            r.outcome,
            r.reason,
            r.diagnostics + r.yaml,
            suite=suite,
            raw=r.raw,
            duration_s=r.duration_s,
        )
        for name, r in tap.flat()
    ]
    reported = {r.name for r in out}
    running = stop.test if stop is not None else None
    if stop is not None and running and running not in reported and _of(running, suite):
        tail = [f"console: {line}" for line in console[-CONSOLE_TAIL:]]
        out.append(TestRecord(running, ERROR, f"{stop.kind}: {stop.message}", tail, suite=suite))
        reported.add(running)
    names = tap.collected
    missing = [n for n in names if n not in reported]
    if not names and tap.plan is not None:
        missing = [f"(test {i})" for i in range(len(tap.results) + 1, tap.plan + 1)]
    why = f"not run: the guest stopped during {running}" if running else "not run"
    out += [TestRecord(name, NOTRUN, why, suite=suite) for name in missing]
    _attribute(out, by_test(dmesg if dmesg is not None else console), by_test(console))
    return out


def _of(name: str, suite: str) -> bool:
    """Whether a test name (from a kmsg marker) is one of `suite`'s."""
    prefix, sep, _ = name.partition(":")
    return prefix == suite if sep and prefix in SUITES else suite == DEFAULT_SUITE


def duplicates(tap: TapParser) -> list[str]:
    """Problems for test names reported more than once: their results would be merged
    into one record, so the run says so instead."""
    seen: dict[str, int] = {}
    for name, _ in tap.flat():
        seen[name] = seen.get(name, 0) + 1
    return [f"test name reported {n} times: {name}" for name, n in seen.items() if n > 1]


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
        if serious and rec.outcome not in BROKEN:
            was = f" (the test itself: {rec.outcome})"
            rec.reason = f"kernel {serious[0][0]} during the test: {serious[0][1]}{was}"
            # Whatever the test came to, a splat makes it an error, raw too.
            rec.outcome, rec.raw = ERROR, None


def expect(recs: list[TestRecord], cell: str, expectations: list[Expectation]) -> None:
    """Known failures: a matching test that fails or errs is XFAIL, one that passes XPASS;
    the record keeps what it came to before (`raw`: a crash stays told from a failed assertion).
    A kernel splat attributed to the test stays an error unless the expectation says the
    known failure is that splat (`kernel: true`): a known assertion failure must not hide
    a new WARN or Oops."""
    for rec in recs:
        exp = next(
            (
                e
                for e in expectations
                if fnmatch.fnmatchcase(rec.id, e.test)
                and fnmatch.fnmatchcase(rec.suite, e.suite)
                and fnmatch.fnmatchcase(cell, e.cells)
            ),
            None,
        )
        if exp is None:
            continue
        rec.raw = rec.raw_outcome  # an xfail marker's test: what it came to itself
        rec.expectation = {k: str(v) for k, v in asdict(exp).items()}
        if rec.outcome == ERROR and serious(rec) and not exp.kernel:
            rec.reason += (
                f" (not covered by the known failure {exp.reason!r}: kernel: true is not set)"
            )
        elif rec.outcome in FAILED:
            was = f" (was {rec.outcome}: {rec.reason})" if rec.reason else f" (was {rec.outcome})"
            rec.outcome, rec.reason = XFAIL, f"known failure: {exp.reason}{was}"
        elif rec.outcome == PASS:
            rec.outcome, rec.reason = XPASS, f"expected to fail ({exp.reason}), but passed"


def raw_outcome(rec: TestRecord) -> str:
    """What the test itself came to, whatever a known failure made of it: a scenario's kept
    its raw outcome; pytest's own xfail marker leaves an xfail that was a fail or an error,
    an xpass that was a pass."""
    raw = rec.raw_outcome or rec.outcome
    return RAW_OF_MARKED.get(raw, raw)


SERIOUS = frozenset(kind for kind, _, serious in ALARMS if serious)


def serious(rec: TestRecord) -> list[str]:
    """The serious kernel alarms attributed to the test."""
    return [line for line in rec.kernel if line.partition(": ")[0] in SERIOUS]


def counts(recs: list[TestRecord]) -> dict[str, int]:
    return count(r.outcome for r in recs if "/" not in r.name)  # subtests: their parent's


def verdict(
    recs: list[TestRecord], problems: list[str], parity_failures: Sequence[str] = ()
) -> str:
    """pass: nothing unexpected; fail: an unexpected fail or pass, or a parity gate that
    failed; error: the rest."""
    outcomes = {r.outcome for r in recs}
    if problems or not recs or outcomes & BROKEN:
        return "error"
    if outcomes & WRONG or parity_failures:
        return "fail"
    return "pass"
