"""Running the guest test payload over SSH and collecting what it leaves behind."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from lab.console import ConsoleWatch
from lab.errors import GuestCommandError, InfraError
from lab.models import DEVICES
from lab.progress import SILENT, Progress
from lab.scenario import Scenario
from lab.ssh import GuestSSH
from lab.tap import TapParser, parse_text

RUNTIME_DIR = Path(__file__).resolve().parent.parent / "guest_tests"
GUEST_RUNTIME = "/root/vfio-lab"  # vfiolib, the TAP plugin, the bind helper: on PYTHONPATH
GUEST_DIR = "/root/tests"  # the tests to run: guest_tests/ itself, or --payload DIR
GUEST_TAP = "/root/results.tap"
GUEST_KCONFIG = "/root/kernel.config"
# pytest's own exit codes 0 (all passed) and 1 (some failed) mean the payload ran.
PYTEST_RAN = (0, 1)


@dataclass
class PayloadRun:
    tap: TapParser
    pytest_status: int
    bound: list[str]


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
    dma_mask = scenario.devices[0].dma_mask
    env = {
        "PYTHONPATH": GUEST_RUNTIME,
        "PYTHONDONTWRITEBYTECODE": "1",
        "VFIO_LAB_KCONFIG": GUEST_KCONFIG,
        "VFIO_LAB_EDU_DMA_MASK": hex(dma_mask),
    }
    argv = pytest_argv("python3", GUEST_TAP)
    argv += scenario.payload.args + extra_args
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return f"cd {GUEST_DIR} && {assignments} {shlex.join(argv)}"


def install_runtime(ssh: GuestSSH, tests: Path | None) -> int:
    """Copy the lab's guest runtime, and the tests to run if any; returns the test files copied."""
    ssh.check(f"rm -rf {GUEST_RUNTIME} {GUEST_DIR} && mkdir -p {GUEST_RUNTIME} {GUEST_DIR}")
    ssh.put_tree(RUNTIME_DIR, GUEST_RUNTIME)
    return ssh.put_tree(tests, GUEST_DIR) if tests is not None else 0


def bind_devices(ssh: GuestSSH, scenario: Scenario) -> list[str]:
    """Bind every scenario device to vfio-pci in the guest; returns the BDFs."""
    bound: list[str] = []
    for dev in scenario.devices:
        pci_id = str(DEVICES[dev.type].pci_id)
        bound += ssh.check(["python3", f"{GUEST_RUNTIME}/lab_guest.py", "bind", pci_id]).split()
    return bound


def run_payload(
    ssh: GuestSSH,
    scenario: Scenario,
    cell_dir: Path,
    kernel_config: Path | None,
    extra_args: list[str],
    progress: Progress = SILENT,
) -> PayloadRun:
    files = install_runtime(ssh, scenario.payload_dir)
    progress("payload", f"copied {files} files from {scenario.payload_dir}")
    if kernel_config is not None and kernel_config.exists():
        ssh.put_file(kernel_config, GUEST_KCONFIG)
    bound = bind_devices(ssh, scenario)
    progress("payload", f"bound {' '.join(bound)} to vfio-pci; running pytest")
    watch = ConsoleWatch(cell_dir / "console.log", scenario.payload.stall_timeout)
    with (cell_dir / "payload.log").open("w") as log:
        result = ssh.run(
            pytest_command(scenario, extra_args),
            timeout=scenario.payload.timeout,
            on_output=lambda text: print(text, end="", file=log, flush=True),
            watch=watch,
        )
        log.write(result.stderr)
    fetched = ssh.fetch_text(GUEST_TAP, cell_dir / "results.tap")
    tap = (
        parse_text((cell_dir / "results.tap").read_text(errors="replace"))
        if fetched
        else TapParser()
    )
    if result.status not in PYTEST_RAN and not tap.results:
        raise GuestCommandError(
            "pytest", result.status, result.stdout[-2000:] + result.stderr[-2000:]
        )
    return PayloadRun(tap=tap, pytest_status=result.status, bound=bound)


def collect_dmesg(ssh: GuestSSH, cell_dir: Path) -> None:
    """Best effort: a guest that crashed has no dmesg to give, and its console.log has the story."""
    try:
        text = ssh.check(["dmesg"], timeout=30)
    except InfraError as e:
        text = f"# dmesg could not be read from the guest ({e}); see console.log\n"
    (cell_dir / "dmesg.txt").write_text(text)
