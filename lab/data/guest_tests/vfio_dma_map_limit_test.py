"""Mirrors upstream's vfio_dma_map_limit_test: the top of the IOVA space, unmap-all, overflow."""

from __future__ import annotations

import errno

import pytest

from vfiolib import memory
from vfiolib import uapi as U
from vfiolib.iommufd import Iommufd

SIZE = memory.PAGE_4K
U64_MAX = (1 << 64) - 1


@pytest.fixture
def top_region(device, diag):
    """A page mapped at the highest IOVA the IOMMU allows."""
    _, ranges = device.iommu.info()
    last = max(end for _, end in ranges)
    iova = (last + 1 - SIZE) & ~(SIZE - 1)
    diag("iova", hex(iova))
    with memory.Buffer(SIZE) as buf:
        device.map_dma(buf.addr, iova, SIZE)
        yield iova
        try:
            device.unmap_dma(iova, SIZE)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise


def test_unmap_range(device, top_region, diag):
    unmapped = device.unmap_dma(top_region, SIZE)
    diag("unmapped", hex(unmapped))
    assert unmapped == SIZE


def test_unmap_all(device, top_region, diag):
    if isinstance(device.iommu, Iommufd):
        unmapped = device.unmap_dma(0, U64_MAX)  # iommufd: iova 0, length U64_MAX means all
    else:
        unmapped = device.unmap_dma(0, 0, flags=U.VFIO_DMA_UNMAP_FLAG_ALL)
    diag("unmapped", hex(unmapped))
    assert unmapped == SIZE


def test_overflow(device, top_region, diag):
    # Page-aligned, so only the wrap past 2**64 is wrong; upstream now expects EOVERFLOW,
    # older kernels said EINVAL: the errno is recorded for comparing cells.
    iova = (1 << 64) - SIZE
    with memory.Buffer(2 * SIZE) as buf, pytest.raises(OSError) as refused:
        device.map_dma(buf.addr, iova, 2 * SIZE)
    diag("map_errno", errno.errorcode.get(refused.value.errno, refused.value.errno))
    with pytest.raises(OSError) as refused:
        device.unmap_dma(iova, 2 * SIZE)
    diag("unmap_errno", errno.errorcode.get(refused.value.errno, refused.value.errno))
