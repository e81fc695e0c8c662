"""The guest's reader of vfio_pci_mmap_huge_fault's debug lines (drivers/vfio/pci/vfio_pci_core.c)."""

from __future__ import annotations

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
