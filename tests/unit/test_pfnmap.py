"""The guest's reader of vfio_pci_mmap_huge_fault's debug lines (drivers/vfio/pci/vfio_pci_core.c)."""

from __future__ import annotations

import pytest

from vfiolib import pfnmap
from vfiolib.pfnmap import size_from

# /dev/kmsg records: "prio,seq,usec,flags;message", a fault tried at PUD, PMD, then 4K.
FALLBACK_TO_PMD = [
    "7,2310,98765432,-;vfio-pci 0000:01:00.0: vfio_pci_mmap_huge_fault(,order = 18) "
    "BAR 1 page offset 0x1: 0x800\n",
    "7,2311,98765440,-;vfio-pci 0000:01:00.0: vfio_pci_mmap_huge_fault(,order = 9) "
    "BAR 1 page offset 0x0: 0x100\n",
]


def test_the_order_that_mapped_gives_the_size():
    assert size_from(FALLBACK_TO_PMD) == 2 << 20
    pud = FALLBACK_TO_PMD[0].replace(": 0x800", ": 0x100")
    assert size_from([pud]) == 1 << 30


def test_fallbacks_only_and_garbage_give_nothing():
    assert size_from(FALLBACK_TO_PMD[:1]) is None
    assert size_from(["6,1,2,-;vfio-pci: something else\n", "\x00garbage"]) is None


class FakeKernel:
    """vfio_pci_mmap_huge_fault behind the kernel's ratelimit (10 lines per 5 s window,
    begun at the first line after the last window ended), on a fake clock. A mapping
    logs its PUD fallback and PMD mapping on its first touch only: touched again, it is
    already mapped and logs nothing."""

    def __init__(self, printed: int) -> None:
        self.now = 100.0
        self.begin = self.now - 1.0  # a window already under way: printed lines in it
        self.printed = printed
        self.touched: set[int] = set()
        self.made = 0

    def fresh(self):
        self.made += 1
        kernel, n = self, self.made

        class Mapping:
            def read32(self, off: int) -> int:
                kernel.touched.add(n)
                return 0

            def close(self) -> None:
                pass

        return Mapping()

    def logged(self, touch) -> list[str]:
        before = set(self.touched)
        touch()
        if self.touched == before:
            return []
        lines = []
        for line in FALLBACK_TO_PMD:
            if self.now > self.begin + pfnmap.RATELIMIT_S:
                self.begin, self.printed = self.now, 0
            if self.printed < pfnmap.RATELIMIT_BURST:
                self.printed += 1
                lines.append(line)
        return lines

    def sleep(self, s: float) -> None:
        self.now += s


def behind(monkeypatch, kernel: FakeKernel) -> FakeKernel:
    """pfnmap in front of `kernel`: its debug line, its clock, nothing measured yet."""
    monkeypatch.setattr(pfnmap.os.path, "exists", lambda path: True)
    monkeypatch.setattr(pfnmap, "_has_debug_line", lambda: True)
    monkeypatch.setattr(pfnmap, "_logged", kernel.logged)
    monkeypatch.setattr(pfnmap.time, "sleep", kernel.sleep)
    monkeypatch.setattr(pfnmap.time, "monotonic", lambda: kernel.now)
    monkeypatch.setattr(pfnmap, "_measured", {})
    return kernel


def test_a_fault_the_ratelimit_cut_short_is_measured_again_on_a_fresh_mapping(monkeypatch):
    """The kernel's window began before this process could see it: 9 of its 10 lines are
    spent, so the fault's mapping line is silenced. The size is still read, from a second
    fresh mapping once a whole window has passed, never "unknown"."""
    kernel = behind(monkeypatch, FakeKernel(printed=9))
    monkeypatch.setattr(pfnmap._Window, "start", kernel.now - 10)  # thinks the window is fresh
    monkeypatch.setattr(pfnmap._Window, "lines", 0)
    assert pfnmap.fault_size(kernel.fresh, "bar1") == 2 << 20
    assert kernel.made == 2  # each try faulted a mapping nothing had touched


def test_a_layout_is_faulted_once_and_another_layout_again(monkeypatch):
    """A cell asks about the same BAR mmap in every IOMMU mode; only the first asks the
    kernel. An mmap laid out otherwise (misaligned) is a question of its own."""
    kernel = behind(monkeypatch, FakeKernel(printed=0))
    aligned, misaligned = ("0000:01:00.0", 1, 0, 0), ("0000:01:00.0", 1, 1 << 30, 4096)
    assert [pfnmap.fault_size(kernel.fresh, aligned) for _ in range(5)] == [2 << 20] * 5
    assert kernel.made == 1
    assert pfnmap.fault_size(kernel.fresh, misaligned) == 2 << 20
    assert kernel.made == 2


def test_an_unknown_size_is_asked_again(monkeypatch):
    """Only a measured size is kept: "unknown" from a cut-short window is no answer."""
    monkeypatch.setattr(pfnmap.os.path, "exists", lambda path: True)
    monkeypatch.setattr(pfnmap, "_has_debug_line", lambda: True)
    monkeypatch.setattr(pfnmap, "_logged", lambda touch: [])
    monkeypatch.setattr(pfnmap.time, "sleep", lambda s: None)
    monkeypatch.setattr(pfnmap, "_measured", {})
    made = []

    def fresh():
        made.append(1)
        return FakeKernel(0).fresh()

    for _ in range(2):
        assert pfnmap.fault_size(fresh, "bar1").startswith("unknown (")
    assert len(made) == 4


def test_a_kernel_without_the_debug_line_is_told_without_waiting(monkeypatch):
    monkeypatch.setattr(pfnmap.os.path, "exists", lambda path: True)
    monkeypatch.setattr(pfnmap, "_has_debug_line", lambda: False)
    monkeypatch.setattr(pfnmap.time, "sleep", lambda s: pytest.fail("waited"))
    assert pfnmap.fault_size(lambda: pytest.fail("faulted"), "bar1") == (
        "unknown (this kernel's vfio-pci has no vfio_pci_mmap_huge_fault debug line)"
    )
