"""A pytest plugin that writes kselftest-style TAP 13 as each test finishes.

One `ok`/`not ok` line per test, named like upstream's KTAP lines
(`<test>.<mode>[_<variant>].<case>`), `# SKIP reason` and `# TODO reason`
directives, `# ERROR` for a broken setup, and each test's diagnostics as `#` lines
before its result, and after it a TAP 13 YAML block with its wall time (`duration_ms`:
setup, call and teardown as pytest timed them) and, under an xfail marker, what the
test came to itself (`raw_outcome`: gates judge that, not the marker's verdict). The
header names every collected test (`# collected: NAME`), so tests a dying guest never
got to can be told apart. Markers go to /dev/kmsg around every test so the host can
attribute kernel messages to the test that was running. With `--tap-fd N` the same
lines also go to that file descriptor as they are written: the host reads them live,
and keeps them even when the guest dies mid-run.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from vfiolib import kmsg
from vfiolib.tap import duration_block

# The lab's own parameters name the variant in this order (upstream's <mode>_<variant>);
# any other parameter follows, so two parametrizations never share a name.
VARIANT_PARAMS = ("iommu_mode", "backing", "irq")
# When setup, call and teardown report differently, the worst one names the test's result.
RANK = {"pass": 1, "skip": 1, "xfail": 1, "xpass": 1, "fail": 2, "error": 3}


def pytest_addoption(parser: Any) -> None:
    parser.addoption("--tap", metavar="PATH", help="write TAP 13 to PATH as tests finish")
    parser.addoption(
        "--tap-fd", type=int, metavar="FD", help="also stream the TAP to this file descriptor"
    )


def tap_name(item: Any) -> str:
    # A module mirroring an upstream fixture named unlike its file says so (TAP_FIXTURE).
    module = getattr(item.module, "TAP_FIXTURE", item.module.__name__.rsplit(".", 1)[-1])
    case = item.originalname.removeprefix("test_")
    params = getattr(getattr(item, "callspec", None), "params", {})
    order = [p for p in VARIANT_PARAMS if p in params] + [
        p for p in params if p not in VARIANT_PARAMS
    ]
    variant = "_".join(str(params[p]) for p in order)
    return f"{module}.{variant}.{case}" if variant else f"{module}.{case}"


class TapWriter:
    def __init__(self, path: str, stream_fd: int | None) -> None:
        self.out = open(path, "w", buffering=1)  # noqa: SIM115 - open for the whole session
        # Opened now, before pytest's capture redirects the standard streams under us.
        self.stream = os.fdopen(stream_fd, "w", buffering=1) if stream_fd is not None else None
        self.count = 0
        self.state: dict[str, dict[str, Any]] = {}

    def emit(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()
        os.fsync(self.out.fileno())
        if self.stream is not None:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except OSError:
                self.stream = None  # the reader went away; the file still has it all

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: Any) -> None:
        self.emit("TAP version 13")
        for item in session.items:
            self.emit(f"# collected: {tap_name(item)}")
        self.emit(f"1..{len(session.items)}")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        self.state[nodeid] = {"outcome": None, "reason": "", "details": [], "duration": 0.0}

    def pytest_runtest_setup(self, item: Any) -> None:
        self.state[item.nodeid]["name"] = tap_name(item)
        self.state[item.nodeid]["item"] = item
        kmsg.mark(f"test-start {tap_name(item)}")

    def pytest_runtest_logreport(self, report: Any) -> None:
        st = self.state[report.nodeid]
        st["duration"] += report.duration
        outcome, reason = _classify(report)
        if outcome is not None and RANK[outcome] > RANK.get(st["outcome"], 0):
            st["outcome"], st["reason"] = outcome, reason
            st["raw"] = _raw(report, outcome)
        if report.failed:
            st["details"] += _failure_lines(report)
        if report.when == "teardown":
            self._finish(report.nodeid, st)

    def _finish(self, nodeid: str, st: dict[str, Any]) -> None:
        self.count += 1
        name = st.get("name") or nodeid
        item = st.get("item")
        for key, value in getattr(item, "user_properties", []):
            self.emit(f"# {key}: {value}")
        for line in st["details"]:
            self.emit(f"# {line}")
        outcome = st["outcome"] or "error"
        kmsg.mark(f"test-end {name} {outcome}")
        self.emit(_result_line(self.count, name, outcome, st["reason"]))
        self.emit(duration_block(st["duration"], st.get("raw")))
        del self.state[nodeid]


def _classify(report: Any) -> tuple[str | None, str]:
    wasxfail = getattr(report, "wasxfail", None)
    if report.skipped:
        if wasxfail is not None:
            return "xfail", wasxfail or "expected failure"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        return "skip", reason.removeprefix("Skipped: ")
    if report.failed:
        return ("fail" if report.when == "call" else "error"), ""
    if report.when == "call":
        return ("xpass", wasxfail) if wasxfail is not None else ("pass", "")
    return None, ""


def _raw(report: Any, outcome: str) -> str | None:
    """What a test an xfail marker judged came to itself: a pass, or an exception in
    its body (fail) or in its setup or teardown (error); None for any other result."""
    if outcome == "xfail":
        return "fail" if report.when == "call" else "error"
    return "pass" if outcome == "xpass" else None


def _failure_lines(report: Any) -> list[str]:
    text = getattr(report, "longreprtext", "") or str(report.longrepr)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return [f"{report.when}: {ln}" for ln in lines[-12:]]


def _result_line(number: int, name: str, outcome: str, reason: str) -> str:
    reason = " ".join(reason.split())
    return {
        "pass": f"ok {number} {name}",
        "skip": f"ok {number} {name} # SKIP {reason}",
        "xfail": f"not ok {number} {name} # TODO {reason}",
        "xpass": f"ok {number} {name} # TODO unexpectedly passed: {reason}",
        "fail": f"not ok {number} {name}",
        "error": f"not ok {number} {name} # ERROR in setup or teardown",
    }[outcome]


def pytest_configure(config: Any) -> None:
    path = config.getoption("--tap")
    if path:
        writer = TapWriter(path, config.getoption("--tap-fd"))
        config.pluginmanager.register(writer, "vfio-lab-tap")
