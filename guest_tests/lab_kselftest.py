"""Run the kernel's own C selftests in the guest and write one TAP 13 stream for the host.

    python3 lab_kselftest.py --tap-fd 3 --suite NAME [--bdf BDF] PROGRAM...

Each program prints its own KTAP (kselftest_harness.h). This runner passes its results
on at the top level under upstream's own ids, qualified by the suite
(`kselftest-vfio:fixture.variant.test`, so they never collide with the lab's pytest
payload, which carries the same ids), renumbered into one document, each result preceded
by the program's `#` lines since the last result (kselftest style: the parser attaches
them to that test), and followed by a TAP 13 YAML block with its wall time
(`duration_ms`, as the pytest plugin writes it): from its `#  RUN` line, else from the
program's previous result or its start, to its result line, as the runner reads them.
Markers go to /dev/kmsg around each test, from the harness's `#  RUN`
and result lines, as the pytest plugin does, so the host attributes kernel messages per
test.

Before anything runs, every program built on kselftest_harness.h is asked for its tests
(`-l`), and the header announces them (`# collected: NAME`, as the pytest plugin's
does): tests a program never reported are `notrun` on the host, even when the guest dies
or hangs under it. A program that did not keep its word is an `error`: it died of a
signal, reported fewer tests than it listed or planned (`1..N`; the tests its plan
alone announced are `PROGRAM.#K`), reported none, or exited non-zero although none of
its tests failed (kselftest's exit codes: 0 pass, 1 some failed, 4 all skipped). The
error is on the test it was running when it died, else on the program, with its exit
status and stderr's tail. `1..0 # SKIP reason` with exit 0 or 4 skips the whole program.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from vfiolib import kmsg
from vfiolib.tap import duration_block

_RUN = re.compile(r"^#\s+RUN\s+(?P<name>\S+)")
_RESULT = re.compile(r"^(?P<ok>ok|not ok)\s+\d+\s+(?:-\s*)?(?P<rest>.*)$")
_SKIP_ALL = re.compile(r"^1\.\.0\s*#\s*SKIP\s*(?P<reason>.*)$", re.IGNORECASE)
_PLAN = re.compile(r"^1\.\.(?P<n>\d+)$")
_NOISE = re.compile(r"^(?:TAP version \d+|KTAP version \d+)\s*$")
_DIRECTIVE = re.compile(r"#\s*(?P<kind>SKIP|TODO|XFAIL)\b", re.IGNORECASE)
COLLECTED = "collected: "  # the header's announcement of a test (TapParser.collected)
STDERR_TAIL = 20
KSFT_PASS, KSFT_FAIL, KSFT_SKIP = 0, 1, 4
# kselftest_harness.h's usage text, compiled into every program built on it: those
# programs list their tests with -l (and exit KSFT_SKIP) instead of running them.
HARNESS_MARK = b"list all tests"
LIST_TIMEOUT_S = 30.0


@dataclass
class Program:
    """What one program announced and reported, as the runner passes it on."""

    suite: str
    path: str
    listed: list[str] = field(default_factory=list)  # its tests by -l, before it ran
    plan: int | None = None  # its own `1..N`
    reported: list[str] = field(default_factory=list)
    failed: bool = False  # a test of it reported `not ok` (no SKIP/TODO/XFAIL)
    skipped: int = 0
    running: str | None = None  # `#  RUN` seen, no result yet
    skip_all: str | None = None
    pending: list[str] = field(default_factory=list)
    since: float = field(default_factory=time.monotonic)  # where its next result's time starts

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def qualified(self, test: str) -> str:
        return f"{self.suite}:{test}"


class Writer:
    def __init__(self, fd: int) -> None:
        self.out = os.fdopen(fd, "w", buffering=1)
        self.count = 0
        self.out.write("TAP version 13\n")

    def announce(self, names: list[str]) -> None:
        for name in names:
            self.out.write(f"# {COLLECTED}{name}\n")

    def result(self, program: Program, ok: bool, rest: str, diagnostics: list[str]) -> None:
        """A result of the program, timed from its `since`, which then starts again."""
        self.count += 1
        for line in diagnostics:
            self.out.write(f"{line}\n")
        now = time.monotonic()
        self.out.write(f"{'ok' if ok else 'not ok'} {self.count} {rest}\n")
        self.out.write(duration_block(now - program.since) + "\n")
        program.since = now

    def close(self, late: list[str]) -> None:
        """The plan, after the tests only a program's plan announced (the parser takes
        the lines before the plan as the document's header)."""
        self.announce(late)
        self.out.write(f"1..{self.count}\n")
        self.out.close()


def parse_listing(text: str) -> list[str]:
    """Test ids from kselftest_harness.h's `-l` table (`%-20s %-25s %s`: fixture, variant,
    test; a fixture's name on its first row only, its variants and tests in two columns
    side by side, fixtures between lines of dashes). Each fixture runs every test under
    each variant, in that order; a name wider than its column pushes the next along."""
    blocks: list[tuple[str, list[str], list[str]]] = []
    for line in text.splitlines():
        if line.startswith(("# FIXTURE", "---")):
            blocks.append(("", [], []))
            continue
        head, rest = _column(line, 20)
        variant, rest = _column(rest, 25)
        if not blocks:
            blocks.append(("", [], []))
        fixture, variants, tests = blocks[-1]
        if head and not fixture:
            blocks[-1] = (head, variants, tests)
        variants += [variant] if variant else []
        tests += [rest.strip()] if rest.strip() else []
    return [
        f"{fixture}.{v}.{t}" if v else f"{fixture}.{t}"
        for fixture, variants, tests in blocks
        if fixture
        for v in variants or [""]
        for t in tests
    ]


def _column(line: str, width: int) -> tuple[str, str]:
    """One `%-{width}s ` column of a row (a C identifier or blanks), and the rest."""
    if line[:1].isspace() or not line:
        return "", line[width + 1 :]
    name = line.split(" ", 1)[0]
    return name, line[max(width, len(name)) + 1 :]


def listed_tests(path: str, argv: list[str]) -> list[str]:
    """The program's tests by -l, if it is built on kselftest_harness.h; else none."""
    try:
        with open(path, "rb") as f:
            if HARNESS_MARK not in f.read():
                return []
        done = subprocess.run(
            [path, "-l", *argv], capture_output=True, text=True, timeout=LIST_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired):
        return []  # its plan still names how many it has; it is run as any other
    return parse_listing(done.stderr)


def lines_of(proc: subprocess.Popen[str]) -> Iterator[str]:
    assert proc.stdout is not None
    for line in proc.stdout:
        yield line.rstrip("\n")


def relay(program: Program, line: str, out: Writer) -> None:
    """One line of a program's output: markers for the kernel log, results for the host."""
    stripped = line.strip()
    nested = line[:1].isspace()  # a nested document's line: its own summary follows
    if m := _RUN.match(stripped):
        program.running = m.group("name")
        program.since = time.monotonic()
        kmsg.mark(f"test-start {program.qualified(program.running)}")
    if m := _SKIP_ALL.match(stripped):
        program.skip_all = m.group("reason") or "skipped"
    elif (m := _PLAN.match(stripped)) and not nested:
        program.plan = int(m.group("n"))
    elif (m := _RESULT.match(stripped)) and not nested:
        _result(program, m, out)
    elif stripped.startswith("#"):
        text = stripped.lstrip("#").strip()
        # A program's line must not pass for the header's announcement of a test.
        program.pending.append(
            f"# {program.name}: {text}" if text.startswith(COLLECTED) else stripped
        )
    elif stripped and not _NOISE.match(stripped) and not _PLAN.match(stripped):
        program.pending.append(f"# {stripped}")


def _result(program: Program, m: re.Match[str], out: Writer) -> None:
    ok = m.group("ok") == "ok"
    rest = m.group("rest").strip()
    name = rest.split("#", 1)[0].strip()
    directive = _DIRECTIVE.search(rest)
    program.reported.append(name)
    program.failed |= not ok and directive is None
    program.skipped += bool(directive and directive.group("kind").upper() == "SKIP")
    program.running = None
    kmsg.mark(f"test-end {program.qualified(name)} {'pass' if ok else 'fail'}")
    out.result(program, ok, program.qualified(rest), program.pending)
    program.pending = []


def run(program: Program, argv: list[str], out: Writer) -> list[str]:
    """Run one program, passing its results on; returns the tests only its plan announced
    that it never reported (the header did not know them)."""
    kmsg.mark(f"program-start {program.name}")
    program.since = time.monotonic()  # not when it was listed
    # stderr to a file: a pipe could fill while stdout is being read, and stall both.
    status: int | str
    with tempfile.TemporaryFile("w+") as err:
        try:
            with subprocess.Popen(
                [program.path, *argv], stdout=subprocess.PIPE, stderr=err, text=True
            ) as proc:
                for line in lines_of(proc):
                    relay(program, line, out)
                status = proc.wait()
        except OSError as e:
            status = f"could not be started ({e})"
        err.seek(0)
        stderr = err.read()
    kmsg.mark(f"program-end {program.name} {status}")
    return finish(program, status, stderr, out)


def finish(program: Program, status: int | str, stderr: str, out: Writer) -> list[str]:
    """The program's last records: a skip of all it announced, or an error where it broke
    its word. Returns the tests only its plan announced that it never reported."""
    if program.skip_all is not None and status in (KSFT_PASS, KSFT_SKIP):
        for name in program.listed or [program.name]:
            out.result(
                program,
                True,
                f"{program.qualified(name)} # SKIP {program.skip_all}",
                program.pending,
            )
            program.pending = []
        return []
    done = set(program.reported)
    missing = [t for t in program.listed if t not in done]
    if program.running is not None and program.running not in missing:
        missing.insert(0, program.running)
    promised = max(len(program.listed), program.plan or 0, len(done) + len(missing))
    unnamed = [f"{program.name}.#{k}" for k in range(len(done) + len(missing) + 1, promised + 1)]
    why = _broken(program, status, len(done), promised)
    if why is None:
        return unnamed
    tail = [f"# stderr: {line}" for line in stderr.splitlines()[-STDERR_TAIL:]]
    culprit = program.running or program.name
    if program.running is not None:
        why = f"{program.name} {why}, during this test"
        kmsg.mark(f"test-end {program.qualified(program.running)} error")
    out.result(
        program, False, f"{program.qualified(culprit)} # ERROR {why}", program.pending + tail
    )
    program.pending = []
    return unnamed


def _broken(program: Program, status: int | str, reported: int, promised: int) -> str | None:
    """Why the program's end does not square with what it reported; None if it does."""
    if isinstance(status, str):
        return status
    ended = f"killed by {signal.Signals(-status).name}" if status < 0 else f"exited {status}"
    if reported == 0:
        return f"{ended} without reporting a test"
    if reported < promised:
        return f"{ended} after reporting {reported} of {promised} tests"
    fine = {KSFT_PASS} | ({KSFT_FAIL} if program.failed else set())
    fine |= {KSFT_SKIP} if program.skipped == reported else set()
    if status in fine:
        return None
    return f"{ended} after reporting all {reported} tests" + (
        "" if program.failed else ", none failed"
    )


def main(args: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tap-fd", type=int, required=True)
    p.add_argument("--suite", required=True, help="qualifies every test id and marker")
    p.add_argument("--bdf", help="the device the programs test (upstream's scripts pass argv)")
    p.add_argument("programs", nargs="+")
    opts = p.parse_args(args)
    argv = [opts.bdf] if opts.bdf else []
    programs = [Program(opts.suite, path, listed_tests(path, argv)) for path in opts.programs]
    out = Writer(opts.tap_fd)
    out.announce([prog.qualified(t) for prog in programs for t in prog.listed])
    late: list[str] = []
    for program in programs:
        late += [program.qualified(t) for t in run(program, argv, out)]
    out.close(late)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
