"""Run the kernel's own C selftests in the guest and write one TAP 13 stream for the host.

    python3 lab_kselftest.py --tap-fd 3 --suite NAME [--bdf BDF] PROGRAM...

Each program prints its own KTAP (kselftest_harness.h). This runner passes its results
on at the top level under upstream's own ids, qualified by the suite
(`kselftest-vfio:fixture.variant.test`, so they never collide with the lab's pytest
payload, which carries the same ids), renumbered into one document, each result preceded by the program's `#` lines since the last result
(kselftest style: the parser attaches them to that test). Markers go to /dev/kmsg
around each test, from the harness's `#  RUN` and result lines, as the pytest plugin
does, so the host attributes kernel messages per test. A program that prints no result
is an error carrying its exit status and stderr; `1..0 # SKIP reason` is a skip of the
whole program with that reason.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from vfiolib import kmsg

_RUN = re.compile(r"^#\s+RUN\s+(?P<name>\S+)")
_RESULT = re.compile(r"^(?P<ok>ok|not ok)\s+\d+\s+(?:-\s*)?(?P<rest>.*)$")
_SKIP_ALL = re.compile(r"^1\.\.0\s*#\s*SKIP\s*(?P<reason>.*)$", re.IGNORECASE)
_NOISE = re.compile(r"^(?:TAP version \d+|KTAP version \d+|1\.\.\d+)\s*$")
STDERR_TAIL = 20


@dataclass
class Program:
    """What one program reported, as the runner passes it on."""

    suite: str
    name: str
    results: int = 0
    skip_all: str | None = None
    pending: list[str] = field(default_factory=list)


class Writer:
    def __init__(self, fd: int) -> None:
        self.out = os.fdopen(fd, "w", buffering=1)
        self.count = 0
        self.out.write("TAP version 13\n")

    def result(self, ok: bool, rest: str, diagnostics: list[str]) -> None:
        self.count += 1
        for line in diagnostics:
            self.out.write(f"{line}\n")
        self.out.write(f"{'ok' if ok else 'not ok'} {self.count} {rest}\n")

    def close(self) -> None:
        self.out.write(f"1..{self.count}\n")
        self.out.close()


def lines_of(proc: subprocess.Popen[str]) -> Iterator[str]:
    assert proc.stdout is not None
    for line in proc.stdout:
        yield line.rstrip("\n")


def relay(program: Program, line: str, out: Writer) -> None:
    """One line of a program's output: markers for the kernel log, results for the host."""
    stripped = line.strip()
    if m := _RUN.match(stripped):
        kmsg.mark(f"test-start {program.suite}:{m.group('name')}")
    if m := _SKIP_ALL.match(stripped):
        program.skip_all = m.group("reason") or "skipped"
    elif m := _RESULT.match(stripped):
        if line[:1].isspace():  # a nested document's line: its own summary follows
            program.pending.append(f"# {stripped}")
            return
        program.results += 1
        rest = f"{program.suite}:{m.group('rest').strip()}"
        name = rest.split(" #", 1)[0].strip()
        kmsg.mark(f"test-end {name} {'pass' if m.group('ok') == 'ok' else 'fail'}")
        out.result(m.group("ok") == "ok", rest, program.pending)
        program.pending = []
    elif stripped.startswith("#"):
        program.pending.append(stripped)
    elif stripped and not _NOISE.match(stripped):
        program.pending.append(f"# {stripped}")


def run(suite: str, path: str, argv: list[str], out: Writer) -> None:
    program = Program(suite, os.path.basename(path))
    kmsg.mark(f"program-start {program.name}")
    # stderr to a file: a pipe could fill while stdout is being read, and stall both.
    with tempfile.TemporaryFile("w+") as err:
        try:
            with subprocess.Popen(
                [path, *argv], stdout=subprocess.PIPE, stderr=err, text=True
            ) as proc:
                for line in lines_of(proc):
                    relay(program, line, out)
                status = proc.wait()
        except OSError as e:
            print(e, file=err)
            status = -1
        err.seek(0)
        stderr = err.read()
    kmsg.mark(f"program-end {program.name} {status}")
    if program.skip_all is not None:
        rest = f"{suite}:{program.name} # SKIP {program.skip_all}"
        out.result(True, rest, program.pending)
    elif program.results == 0:
        tail = [f"# stderr: {line}" for line in stderr.splitlines()[-STDERR_TAIL:]]
        why = f"exited {status} without reporting a test"
        out.result(False, f"{suite}:{program.name} # ERROR {why}", program.pending + tail)


def main(args: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tap-fd", type=int, required=True)
    p.add_argument("--suite", required=True, help="qualifies every test id and marker")
    p.add_argument("--bdf", help="the device the programs test (upstream's scripts pass argv)")
    p.add_argument("programs", nargs="+")
    opts = p.parse_args(args)
    out = Writer(opts.tap_fd)
    for path in opts.programs:
        run(opts.suite, path, [opts.bdf] if opts.bdf else [], out)
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
