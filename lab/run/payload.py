"""Running the guest test payload over SSH and collecting what it leaves behind."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab.artifacts.selftests import SelftestBuild
from lab.core.data import GUEST_TESTS
from lab.core.errors import GuestCommandError, InfraError, UsageError
from lab.core.files import HostFile, write_file
from lab.model.scenario import Scenario
from lab.model.variants import DEVICES
from lab.results.tap import TapParser, TapResult
from lab.vm.console import TEST_STOPS, ConsoleWatch, Stop
from lab.vm.ssh import CommandResult, GuestSSH, GuestStalled

RUNTIME_DIR = GUEST_TESTS
GUEST_RUNTIME = "/root/vfio-lab"  # vfiolib, the TAP plugin, the bind helper: on PYTHONPATH
GUEST_DIR = "/root/tests"  # the tests to run: guest_tests/ itself, or --payload DIR
GUEST_TAP = "/root/results.tap"
GUEST_KCONFIG = "/root/kernel.config"
GUEST_SUITES = "/root/suites"  # the C selftests' programs, a directory per suite
TAP_FD = 3
# pytest's own exit codes 0 (all passed) and 1 (some failed) mean the payload ran;
# 4 (bad arguments) and 5 (no test collected, e.g. a -k that matches nothing) are the
# user's to fix, not the infrastructure's.
PYTEST_RAN = (0, 1)
PYTEST_NO_TESTS = 5
PYTEST_USAGE = (4, PYTEST_NO_TESTS)


@dataclass
class PayloadRun:
    pytest_status: int | None  # None: the watch stopped it
    stop: Stop | None = None


class TapStream:
    """The payload's TAP as it arrives over SSH: parsed line by line and written to
    results.tap at once, so a guest that dies mid-run still leaves what it reported."""

    def __init__(self, path: Path, on_result: Callable[[TapResult], None] | None = None) -> None:
        self.parser = TapParser()
        self.file = HostFile(path, "w")
        self.on_result = on_result
        self._partial = ""

    def __call__(self, text: str) -> None:
        self.file.write(text)
        self.file.flush()
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._feed(line)

    def _feed(self, line: str) -> None:
        before = len(self.parser.results)
        self.parser.feed(line)
        if self.on_result is not None and len(self.parser.results) > before:
            self.on_result(self.parser.results[-1])

    def close(self) -> None:
        if self._partial:
            self._feed(self._partial)
            self._partial = ""
        self.file.close()


def pytest_argv(python: str, tap: str) -> list[str]:
    """pytest with the lab's TAP plugin; the unit tests run the very same argv on the host."""
    return [
        python,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-p",
        "tap_report",
        "-rs",
        f"--tap={tap}",
    ]


def pytest_command(scenario: Scenario, extra_args: list[str]) -> str:
    env = {
        "PYTHONPATH": GUEST_RUNTIME,
        "PYTHONDONTWRITEBYTECODE": "1",
        "VFIO_LAB_KCONFIG": GUEST_KCONFIG,
    }
    # The edu the payload drives: the first one, wherever it is listed (igb may come first,
    # for the C suites).
    edu = next((d for d in scenario.devices if d.type == "edu"), None)
    if edu is not None:
        env["VFIO_LAB_EDU_DMA_MASK"] = hex(edu.dma_mask)
        if edu.bar is not None:
            env["VFIO_LAB_EDU_RAM_BAR"] = f"{edu.bar.size:#x}:{edu.bar.index or 1}"
        if edu.dma_delay is not None:
            env["VFIO_LAB_EDU_DMA_DELAY_NS"] = str(edu.dma_delay)
    argv = [*pytest_argv("python3", GUEST_TAP), f"--tap-fd={TAP_FD}"]
    argv += scenario.payload.args + extra_args
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    # stdout carries only the TAP stream; pytest's own output goes to stderr.
    return f"cd {GUEST_DIR} && {assignments} {shlex.join(argv)} {TAP_FD}>&1 1>&2"


def install_runtime(ssh: GuestSSH, tests: Path | None, kernel_config: Path | None = None) -> int:
    """Copy the lab's guest runtime, the tests to run if any, and the kernel's config if it
    has one (the payload reads what the cell's kernel promises from it); returns the number
    of test files copied."""
    ssh.check(f"rm -rf {GUEST_RUNTIME} {GUEST_DIR} && mkdir -p {GUEST_RUNTIME} {GUEST_DIR}")
    ssh.put_tree(RUNTIME_DIR, GUEST_RUNTIME)
    if kernel_config is not None and kernel_config.exists():
        ssh.put_file(kernel_config, GUEST_KCONFIG)
    return ssh.put_tree(tests, GUEST_DIR) if tests is not None else 0


def bind_devices(ssh: GuestSSH, scenario: Scenario) -> list[str]:
    """Bind every scenario device to vfio-pci in the guest; returns the BDFs."""
    bound: list[str] = []
    for dev in scenario.devices:
        pci_id = str(DEVICES[dev.type].pci_id)
        bound += ssh.check(["python3", f"{GUEST_RUNTIME}/lab_guest.py", "bind", pci_id]).split()
    return bound


def _stream(
    ssh: GuestSSH, command: str, timeout: float, stream: TapStream, watch: ConsoleWatch, log: Path
) -> CommandResult | PayloadRun:
    """Run `command` with its TAP on stdout going into `stream` and its stderr into `log`.
    A panic or a hung test ends it early: a PayloadRun with the `stop`."""
    with HostFile(log, "a") as out:
        try:
            result = ssh.run(
                command,
                timeout=timeout,
                on_output=stream,
                on_stderr=lambda text: print(text, end="", file=out, flush=True),
                watch=watch,
            )
        except GuestStalled:
            if watch.stop is None or watch.stop.kind not in TEST_STOPS:
                raise
            return PayloadRun(pytest_status=None, stop=watch.stop)
    stream.close()
    return result


def run_payload(
    ssh: GuestSSH,
    scenario: Scenario,
    extra_args: list[str],
    stream: TapStream,
    watch: ConsoleWatch,
    log: Path,
    may_select_none: bool = False,
) -> PayloadRun:
    """Run pytest in a ready guest (see `CellBooter.ready`), its TAP going into `stream` as it
    comes. A panic or a hung test ends it early with a `stop`; any other trouble is an
    InfraError. pytest collecting no test is a UsageError, unless `may_select_none` (its
    TAP then says so: a plan of 0)."""
    command = pytest_command(scenario, extra_args)
    result = _stream(ssh, command, scenario.payload.timeout, stream, watch, log)
    if isinstance(result, PayloadRun):
        return result
    if may_select_none and result.status == PYTEST_NO_TESTS and stream.parser.plan == 0:
        return PayloadRun(pytest_status=result.status)
    if result.status in PYTEST_USAGE and not stream.parser.results:
        tail = result.stderr.strip().splitlines()[-3:]
        raise UsageError(
            f"pytest in the guest exited {result.status}: no test ran "
            f"(check -k and payload.args): {' | '.join(tail)}"
        )
    if result.status not in PYTEST_RAN and not stream.parser.results:
        raise GuestCommandError("pytest", result.status, result.stderr[-4000:])
    return PayloadRun(pytest_status=result.status)


def collect_dmesg(ssh: GuestSSH, cell_dir: Path) -> list[str] | None:
    """Best effort: a guest that crashed has no dmesg to give, and its console.log has the story."""
    try:
        text = ssh.check(["dmesg"], timeout=30)
    except InfraError as e:
        write_file(
            cell_dir / "dmesg.txt",
            f"# dmesg could not be read from the guest ({e}); see console.log\n",
        )
        return None
    write_file(cell_dir / "dmesg.txt", text)
    return text.splitlines()


def selftests_command(build: SelftestBuild, bdf: str | None) -> str:
    """The guest runner over the suite's programs, its TAP on stdout as pytest's is."""
    where = f"{GUEST_SUITES}/{build.suite}"
    argv = ["python3", f"{GUEST_RUNTIME}/lab_kselftest.py", f"--tap-fd={TAP_FD}"]
    argv += ["--suite", build.suite, *(["--bdf", bdf] if bdf else [])]
    argv += [f"{where}/{p}" for p in build.programs]
    return f"cd {where} && {shlex.join(argv)} {TAP_FD}>&1 1>&2"


def run_selftests(
    ssh: GuestSSH,
    build: SelftestBuild,
    bdf: str | None,
    timeout: float,
    stream: TapStream,
    watch: ConsoleWatch,
    log: Path,
) -> PayloadRun:
    """Copy a C suite's programs in and run them; a suite its tree lacks is one skip."""
    if build.absent:
        stream(f"TAP version 13\nok 1 {build.suite} # SKIP {build.absent}\n1..1\n")
        stream.close()
        return PayloadRun(pytest_status=0)
    where = f"{GUEST_SUITES}/{build.suite}"
    ssh.check(f"rm -rf {where} && mkdir -p {where}")
    for program in build.programs:
        ssh.put_file(Path(build.bin) / program, f"{where}/{program}")
    ssh.check(["chmod", "+x", *(f"{where}/{p}" for p in build.programs)])
    result = _stream(ssh, selftests_command(build, bdf), timeout, stream, watch, log)
    if isinstance(result, PayloadRun):
        return result
    if result.status != 0:
        raise GuestCommandError(f"the {build.suite} runner", result.status, result.stderr[-4000:])
    return PayloadRun(pytest_status=result.status)
