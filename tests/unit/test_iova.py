from __future__ import annotations

import pytest

from vfiolib.iova import IovaAllocator


def test_respects_ranges_alignment_and_overlap():
    a = IovaAllocator([(0, 0xFEDFFFFF), (0xFEF00000, 0x7FFFFFFFFF)])
    assert a.alloc(0x1000) == 0x100000
    assert a.alloc(0x1000) == 0x101000
    assert a.alloc(0x200000, align=0x200000) == 0x200000
    big = a.alloc(1 << 30, align=1 << 30)
    assert big == 1 << 30


def test_skips_reserved_hole_and_respects_dma_mask():
    a = IovaAllocator(
        [(0, 0xFEDFFFFF), (0xFEF00000, 0x7FFFFFFFFF)], dma_mask=(1 << 32) - 1, start=0xFED00000
    )
    assert a.alloc(0x100000) == 0xFED00000
    assert a.alloc(0x100000) == 0xFEF00000  # jumps the MSI hole
    with pytest.raises(MemoryError):
        a.alloc(1 << 32)
