"""Mirrors upstream's vfio_dma_mapping_test: map and unmap process memory for DMA.

Where intel-iommu's debugfs exists, the IOPTE backing the mapping is read from the
page-table dump and recorded (`iopte_size`); it must match the backing page size,
except in type1 v1 modes: iommufd's emulation of v1 disables huge IOPTEs, so upstream
skips the check there (shared/seeds/000 and 001) and the lab only records it. Behind
another IOMMU (smmuv3, virtio-iommu) the size is recorded as unknown, naming the model.
"""

from __future__ import annotations

import pytest

from vfiolib import iopte, memory

TYPE1_V1 = ("vfio_type1_iommu", "iommufd_compat_type1")


@pytest.fixture(params=list(memory.BACKINGS))
def backing(request):
    """Hugepage backings need pages the scenario reserved (machine.hugepages): none reserved
    is a skip; reserved but none free is a failure (something leaked or ate them)."""
    page, _ = memory.BACKINGS[request.param]
    if page > memory.PAGE_4K:
        size = f"{page >> 20} MiB"
        reserved = memory.hugepages_reserved(page)
        if reserved == 0:
            pytest.skip(f"no {size} hugepages reserved in the guest (machine.hugepages)")
        if memory.hugepages_free(page) < 1:
            pytest.fail(f"{reserved} {size} hugepages reserved (machine.hugepages), none free")
    return request.param


def test_dma_map_unmap(device, iommu_mode, backing, iova_allocator, diag):
    with memory.Buffer(memory.BACKINGS[backing][0], backing) as buf:
        iova = iova_allocator.alloc(buf.size, align=buf.page_size)
        device.map_dma(buf.addr, iova, buf.size)
        diag("iova", hex(iova))
        diag("size", hex(buf.size))
        size = iopte.iopte_size(device.bdf, iova)
        diag("iopte_size", iopte.recorded(size) or "unknown")
        unmapped = device.unmap_dma(iova, buf.size)
        diag("unmapped", hex(unmapped))
        assert unmapped == buf.size
        if iopte.readable():
            after = iopte.iopte_size(device.bdf, iova)
            diag("iopte_after_unmap", iopte.human(after))
            assert after is None, (
                f"IOVA {iova:#x} is still mapped ({iopte.human(after)}) after unmap"
            )
            if iommu_mode not in TYPE1_V1:
                assert size == buf.page_size, (
                    f"IOPTE of {iopte.human(size)} for a {iopte.human(buf.page_size)} page"
                )
