"""Mirrors upstream's vfio_pci_driver_test, with edu as the DMA engine instead of DSA/IOAT."""

from __future__ import annotations

import contextlib
import os

import pytest
from vfiolib import edu as E
from vfiolib import memory

SIZE = 2 * E.BUF_SIZE


@pytest.fixture
def mapped(device, iova_allocator):
    """Two mapped buffers (source and destination) and a cleanup that unmaps what is left."""
    bufs, maps = [], []
    for _ in range(2):
        buf = memory.Buffer(SIZE)
        bufs.append(buf)
        iova = iova_allocator.alloc(buf.size)
        device.map_dma(buf.addr, iova, buf.size)
        maps.append(iova)
    yield list(zip(bufs, maps, strict=True))
    for iova in maps:
        with contextlib.suppress(OSError):  # the test unmapped it itself
            device.unmap_dma(iova, SIZE)
    for buf in bufs:
        buf.close()


def test_memcpy_success(edu, mapped, diag):
    (src, src_iova), (dst, dst_iova) = mapped
    pattern = os.urandom(SIZE)
    src.write(0, pattern)
    dst.fill(0)
    copied = edu.memcpy(src_iova, dst_iova, SIZE)
    diag("bytes_copied", copied)
    assert dst.read() == pattern


def test_memcpy_to_unmapped_region(device, edu, mapped, diag):
    (src, src_iova), (dst, dst_iova) = mapped
    src.write(0, b"\xa5" * E.CHUNK)
    dst.fill(0x5A)
    edu.to_device(src_iova, E.CHUNK)
    device.unmap_dma(dst_iova, SIZE)
    edu.from_device(dst_iova, E.CHUNK)
    untouched = dst.read(0, E.CHUNK) == b"\x5a" * E.CHUNK
    diag("destination_untouched", untouched)
    assert untouched, "a DMA to an unmapped IOVA wrote process memory"


def test_memcpy_from_unmapped_region(device, edu, mapped, diag):
    (src, src_iova), (dst, dst_iova) = mapped
    secret = b"\xc3" * E.CHUNK
    src.write(0, secret)
    device.unmap_dma(src_iova, SIZE)
    edu.to_device(src_iova, E.CHUNK)
    edu.from_device(dst_iova, E.CHUNK)
    leaked = dst.read(0, E.CHUNK) == secret
    diag("source_leaked", leaked)
    assert not leaked, "the device read memory whose IOVA was unmapped"


def test_dma_outside_mask_refused(edu, mapped):
    if edu.dma_mask == (1 << 64) - 1:
        pytest.skip("edu has a 64-bit DMA mask: no IOVA lies outside it")
    with pytest.raises(E.EduError, match="outside edu's DMA mask"):
        edu.to_device(edu.dma_mask + 1, 16)
