"""A cell on a loaded host (issue 21), through CellRun's real payload, triage and results
with a fake guest at the seam: a transmit-queue stall SSH survives leaves the cell's
verdict alone and shows on the cell; one SSH does not survive is still a dead network;
the time the host kept QEMU waiting is recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lab.core.errors import InfraError
from lab.core.progress import SILENT
from lab.model import scenario, shards
from lab.results import reports
from lab.results.summary import CellResult, RunResults, empty_counts, table
from lab.run import cell as cell_mod
from lab.run.booter import ReadyGuest
from lab.run.cell import CellRun
from lab.vm.console import ConsoleWatch
from lab.vm.runclock import RunClock
from lab.vm.ssh import CommandResult, GuestStalled

TEST = "vfio_dma_mapping_test.vfio_type1_iommu_anonymous_hugetlb_1gb.dma_map_unmap"
STALL = "NETDEV WATCHDOG: CPU: 0: transmit queue 0 timed out 10156 ms"
TAP = f"TAP version 13\n# collected: {TEST}\nok 1 {TEST}\n1..1\n"


class FakeSSH:
    """The guest's side: the payload prints the marker and, while the test runs, the
    kernel reports the stalled queue; the lab's watch is asked as `_collect` asks it."""

    def __init__(self, console: Path, answer: float | None) -> None:
        self.console = console
        self.answer = answer
        self.probes = 0

    def run(
        self, command: str, timeout: float, on_output: Any, on_stderr: Any, watch: ConsoleWatch
    ) -> CommandResult:
        with self.console.open("a") as f:
            f.write(f"[ 30.0] vfio-lab: test-start {TEST}\n[ 38.0] virtio_net virtio1 eth0: ")
            f.write(f"{STALL}\n")
        if reason := watch.verdict():
            raise GuestStalled(command, reason)
        with self.console.open("a") as f:
            f.write(f"[ 52.0] vfio-lab: test-end {TEST} pass\n")
        on_output(TAP)
        return CommandResult(0, TAP, "")

    def answers(self, timeout: float) -> float | None:
        assert timeout == cell_mod.NETWORK_PROBE_S
        self.probes += 1
        return self.answer

    def check(self, command: list[str], timeout: float) -> str:
        assert command == ["dmesg"]
        return self.console.read_text()


class FakeMachine:
    pid = 4242
    abnormal = None

    def exit_status(self, wait: float = 0.0) -> int | None:
        return None


class FakeGuest:
    def __init__(self, ssh: FakeSSH) -> None:
        self.ssh = ssh
        self.machine = FakeMachine()
        self.abandoned = False

    def abandon(self) -> None:
        self.abandoned = True


class StarvedHost:
    """QEMU (pid 4242) whose busiest thread waits half of every second for a CPU."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waited = 0.0

    def of_process(self, pid: int | None) -> RunClock:
        assert pid == FakeMachine.pid
        return RunClock(self.waits, now=self.tick)

    def tick(self) -> float:
        self.now += 1.0
        self.waited += 0.5
        return self.now

    def waits(self) -> dict[int, float]:
        return {4243: self.waited}


def run_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: float | None) -> Any:
    """The quick scenario's cell with the fake guest: (result, records, guest)."""
    monkeypatch.setattr(cell_mod.RunClock, "of_process", StarvedHost().of_process)
    (cell,) = scenario.expand(scenario.load(scenario.locate("quick")))
    cell_dir = tmp_path / "run" / cell.name
    cell_dir.mkdir(parents=True)
    guest = FakeGuest(FakeSSH(cell_dir / "console.log", answer))
    result = CellResult(cell.name, cell.kernel.label, "error", empty_counts(), str(cell_dir), 1.0)
    run = CellRun(cell, cell_dir, None, [], SILENT)  # type: ignore[arg-type]  # payload only
    ready = ReadyGuest(guest, ["0000:01:00.0"])  # type: ignore[arg-type]
    try:
        outcome = run.payload(ready, None, result)  # type: ignore[arg-type]
    except InfraError as e:
        return result, e, guest
    return result, run.triage(outcome, result), guest


def test_a_stall_ssh_survives_leaves_the_verdict_alone_and_shows_on_the_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, records, guest = run_cell(tmp_path, monkeypatch, answer=0.3)
    assert guest.ssh.probes == 1 and not guest.abandoned
    assert [(r.name, r.outcome) for r in records] == [(TEST, "pass")]
    assert result.verdict == "pass" and result.infra_error is None and result.problems == []
    warning = f"{STALL} during {TEST}; SSH still answered (in 0.3 s), so the guest went on"
    assert result.warnings == [warning]
    run = RunResults(tmp_path / "run", "quick", "id", "tcg", "test", shards.plan([]))
    run.set_records(result.name, records)
    run.add(result)
    assert run.finish() == 0
    (recorded,) = json.loads((tmp_path / "run" / "summary.json").read_text())["cells"]
    assert recorded["warnings"] == [warning] and recorded["verdict"] == "pass"
    assert f"{result.name}: warning: {warning}" in table(run)
    assert f"warning: {warning}" in (tmp_path / "run" / reports.HTML).read_text()


def test_a_stall_ssh_does_not_survive_is_still_a_dead_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, error, guest = run_cell(tmp_path, monkeypatch, answer=None)
    assert isinstance(error, GuestStalled) and guest.ssh.probes == 1
    assert error.reason == f"the guest's network stalled ({STALL}) and SSH no longer answered"
    assert result.warnings == []


def test_the_time_the_host_kept_qemu_waiting_is_the_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, _, _ = run_cell(tmp_path, monkeypatch, answer=0.3)
    # Half of each second the clock was read, however often that was.
    assert result.host_wait_s is not None and result.host_wait_s > 0
    assert result.host_wait_s * 2 == int(result.host_wait_s * 2)
