"""Mirrors upstream's vfio_dma_mapping_test: map and unmap process memory for DMA."""

from __future__ import annotations

import pytest
from vfiolib import memory


@pytest.fixture(params=list(memory.BACKINGS))
def backing(request):
    page, _ = memory.BACKINGS[request.param]
    if page > memory.PAGE_4K and memory.hugepages_free(page) < 1:
        pytest.skip(f"no free {page >> 20} MiB hugepages reserved in the guest (machine.hugepages)")
    return request.param


def test_dma_map_unmap(device, backing, iova_allocator, diag):
    with memory.Buffer(memory.BACKINGS[backing][0], backing) as buf:
        iova = iova_allocator.alloc(buf.size, align=buf.page_size)
        device.map_dma(buf.addr, iova, buf.size)
        diag("iova", hex(iova))
        diag("size", hex(buf.size))
        unmapped = device.unmap_dma(iova, buf.size)
        diag("unmapped", hex(unmapped))
        assert unmapped == buf.size
