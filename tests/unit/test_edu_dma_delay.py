"""edu's DMA delay (devices[].dma_delay, the lab's QEMU patch 0003): the duration a
scenario writes, where it goes (QEMU's argv, summary.json, the guest's environment),
and the guest's edu driver waiting for a transfer of any delay."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from lab.artifacts import qemu
from lab.core.errors import InfraError
from lab.model import scenario, shards
from lab.model.schema import parse_duration
from lab.model.variants import DEVICES
from lab.results.summary import RunResults
from lab.run.cell import CellRun
from lab.run.payload import pytest_command
from vfiolib import edu as E

DELAY_PATCH = "0003-hw-misc-edu-make-the-DMA-delay-a-property.patch"


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0ns", 0),
        ("10us", 10_000),
        ("1.5ms", 1_500_000),
        ("1.1us", 1_100),  # exact, not 1100.0000000000002
        (" 2 s ", 2_000_000_000),
        ("0.000000001s", 1),
    ],
)
def test_parse_duration(text, ns):
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["10", "10 min", "-1ms", "1e3ns", "ms", "10MS", "0.5ns"])
def test_parse_duration_refuses_what_is_not_a_whole_ns_with_a_unit(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def load(tmp_path: Path, devices: str, qemu_choice: str = "lab") -> scenario.Scenario:
    path = tmp_path / "s.yaml"
    path.write_text(f"machine: {{qemu: {qemu_choice}}}\ndevices:\n{devices}")
    return scenario.load(path)


def test_unset_is_none_and_a_path_qemu_may_take_a_delay(tmp_path):
    s = load(tmp_path, "  - type: edu\n  - type: edu\n    dma_delay: 250us\n")
    assert [d.dma_delay for d in s.devices] == [None, 250_000]
    # Like the RAM BAR: only Debian's QEMU is known to lack it.
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert load(tmp_path, "  - type: edu\n    dma_delay: 1ms\n", str(fake)).devices[0].dma_delay


def test_edu_limit_is_the_patchs(tmp_path):
    """The lab refuses what the patched edu would refuse at realize, and nothing less."""
    text = (qemu.PATCHES / DELAY_PATCH).read_text()
    m = re.search(r"#define EDU_DMA_DELAY_MAX\s+\((\d+) \* NANOSECONDS_PER_SECOND\)", text)
    assert m, "the patch no longer defines EDU_DMA_DELAY_MAX as the lab reads it"
    assert DEVICES["edu"].dma_delay_max_ns == int(m.group(1)) * 10**9
    assert "#define EDU_DMA_DELAY_DEFAULT   (100 * SCALE_MS)" in text


def test_the_delay_patch_is_in_the_series_after_the_bar_patch():
    names = qemu.series()
    assert names.index(DELAY_PATCH) > names.index(
        "0001-hw-misc-edu-add-an-optional-RAM-backed-64-bit-BAR.patch"
    )
    text = (qemu.PATCHES / DELAY_PATCH).read_text()
    assert '"dma-delay-ns"' in text and "diff --git a/docs/specs/edu.rst" in text
    assert "Signed-off-by:" in text


def test_the_guest_is_told_the_delay_only_when_the_scenario_sets_it(tmp_path):
    def env(devices: str) -> dict[str, str]:
        words = shlex.split(pytest_command(load(tmp_path, devices), []))
        return dict(w.split("=", 1) for w in words if w.startswith("VFIO_LAB_"))

    assert env("  - type: edu\n    dma_delay: 10us\n")["VFIO_LAB_EDU_DMA_DELAY_NS"] == "10000"
    assert env("  - type: edu\n    dma_delay: 0ns\n")["VFIO_LAB_EDU_DMA_DELAY_NS"] == "0"
    assert "VFIO_LAB_EDU_DMA_DELAY_NS" not in env("  - type: edu\n")


def test_the_guest_is_told_of_the_first_edu_wherever_it_is_listed(tmp_path):
    """igb comes first for the C suites; the payload still drives edu, and must get edu's
    DMA mask, RAM BAR and delay, not igb's defaults."""
    s = load(
        tmp_path,
        "  - type: igb\n"
        "  - type: edu\n    dma_mask: 0xfffffff\n    dma_delay: 1ms\n    bar: {size: 4K}\n"
        "  - type: edu\n    dma_delay: 2ms\n",
    )
    words = shlex.split(pytest_command(s, []))
    env = dict(w.split("=", 1) for w in words if w.startswith("VFIO_LAB_EDU"))
    assert env == {
        "VFIO_LAB_EDU_DMA_MASK": "0xfffffff",
        "VFIO_LAB_EDU_RAM_BAR": "0x1000:1",
        "VFIO_LAB_EDU_DMA_DELAY_NS": "1000000",
    }
    alone = load(tmp_path, "  - type: igb\n")
    assert "VFIO_LAB_EDU" not in pytest_command(alone, [])


class NoKernelToday:
    def prepare(self, cell: scenario.Cell) -> None:
        raise InfraError("no kernel today")


def test_summary_records_each_cells_devices_even_when_the_cell_failed_early(tmp_path):
    s = load(tmp_path, "  - type: edu\n    dma_delay: 10us\n    bar: {size: 1G}\n  - type: edu\n")
    (cell,) = scenario.expand(s)
    run = RunResults(tmp_path / "run", "s", "id", "tcg", "test", shards.plan([cell]))
    (tmp_path / "run").mkdir()
    result, records = CellRun(
        cell, tmp_path / "run" / cell.name, NoKernelToday(), [], lambda *a: None
    ).run()
    run.set_records(cell.name, records)
    run.add(result)
    (recorded,) = json.loads((tmp_path / "run" / "summary.json").read_text())["cells"]
    assert recorded["infra_error"] == "no kernel today"
    assert recorded["devices"] == [
        {
            "type": "edu",
            "dma_mask": (1 << 64) - 1,
            "ram_bar_size": 1 << 30,
            "ram_bar_index": 1,
            "dma_delay_ns": 10_000,
        },
        {
            "type": "edu",
            "dma_mask": (1 << 64) - 1,
            "ram_bar_size": 0,
            "ram_bar_index": 1,
            "dma_delay_ns": None,
        },
    ]


# -- the guest's edu driver ------------------------------------------------------------------


class Clock:
    """Virtual time: sleeping advances it, nothing else does."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeEdu:
    """edu's DMA registers: a transfer is done `delay` seconds after its start."""

    def __init__(self, clock: Clock, delay: float) -> None:
        self.clock, self.delay = clock, delay
        self.done_at: float | None = None
        self.reads = 0

    # The VfioPciDevice side the driver uses.
    def mmap(self, index: int) -> FakeEdu:
        return self

    def set_bus_master(self, on: bool) -> None:
        pass

    # The Mapping side.
    def write64(self, offset: int, value: int) -> None:
        if offset == E.DMA_CMD and value & E.DMA_RUN:
            self.done_at = self.clock.now + self.delay

    def read64(self, offset: int) -> int:
        assert offset == E.DMA_CMD and self.done_at is not None
        self.reads += 1
        return E.DMA_RUN if self.clock.now < self.done_at else 0


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(E.time, "monotonic", c.monotonic)
    monkeypatch.setattr(E.time, "sleep", c.sleep)
    return c


def test_a_transfer_longer_than_the_old_5_s_completes_when_the_delay_says_so(clock):
    device = FakeEdu(clock, delay=8.0)
    E.Edu(device, dma_delay=8.0).to_device(0x1000, 64)
    assert 8.0 <= clock.now < 8.0 + E.POLL_MAX


def test_a_lost_transfer_is_still_given_up_on_past_its_delay_and_grace(clock):
    device = FakeEdu(clock, delay=float("inf"))
    with pytest.raises(E.EduError, match=r"did not complete within 5\.1 s"):
        E.Edu(device, dma_delay=0.1).from_device(0x1000, 64)
    assert 5.1 < clock.now < 5.1 + 2 * E.POLL_MAX


def test_a_short_delay_costs_about_itself_and_a_long_one_few_reads(clock):
    short = FakeEdu(clock, delay=10e-6)
    E.Edu(short, dma_delay=10e-6).to_device(0x1000, 64)
    assert clock.now < 100e-6, "a 10 us transfer waited for a 5 ms poll"
    clock.now = 0.0
    long = FakeEdu(clock, delay=0.1)
    E.Edu(long, dma_delay=0.1).to_device(0x1000, 64)
    assert 0.1 <= clock.now < 0.1 + E.POLL_MAX
    assert long.reads < 3


def test_edus_own_100_ms_is_polled_every_5_ms_after_the_delay(clock):
    """No storm of short sleeps for a long delay: the first wait is the delay itself."""
    device = FakeEdu(clock, delay=0.1 + 0.012)  # a busy host made it late
    E.Edu(device, dma_delay=0.1).to_device(0x1000, 64)
    assert clock.sleeps[0] == 0.1 and set(clock.sleeps[1:]) == {0.005}
