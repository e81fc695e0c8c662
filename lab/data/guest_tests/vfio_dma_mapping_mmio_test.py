"""Mirrors upstream's vfio_dma_mapping_mmio_test: DMA-mapping an mmap'ed PCI BAR.

type1 (VFIO's own container) maps MMIO; iommufd never does (it pins pages, and a BAR
mmap has none): that includes type1 served by iommufd's /dev/vfio/vfio, which is how
CONFIG_IOMMUFD_VFIO_CONTAINER changes what type1 users see (shared/seeds/000).
"""

from __future__ import annotations

import pytest

from vfiolib import vfio
from vfiolib.vfio import Mapping


def served_by_iommufd(mode: str) -> bool:
    return mode.startswith("iommufd") or vfio.container_provider() == "iommufd"


def map_and_check(device, iommu_mode, bar: Mapping, size: int, iova: int, diag) -> None:
    diag("vaddr_offset_alignment", hex(bar.addr % max(size, 4096)))
    if served_by_iommufd(iommu_mode):
        with pytest.raises(OSError) as refused:
            device.map_dma(bar.addr, iova, size)
        diag("errno", refused.value.errno)
        return
    device.map_dma(bar.addr, iova, size)
    unmapped = device.unmap_dma(iova, size)
    diag("unmapped", hex(unmapped))
    assert unmapped == size


def test_map_full_bar(device, iommu_mode, iova_allocator, diag):
    bar = device.mmap(0)
    map_and_check(
        device, iommu_mode, bar, bar.size, iova_allocator.alloc(bar.size, align=bar.size), diag
    )


def test_map_partial_bar(device, iommu_mode, iova_allocator, diag):
    bar = device.mmap(0)
    half = bar.size // 2
    map_and_check(device, iommu_mode, bar, half, iova_allocator.alloc(half, align=half), diag)


def test_map_bar_misaligned(device, iommu_mode, iova_allocator, diag):
    # vaddr % align != offset % align: the kernel cannot use a huge pfnmap for this mmap.
    region = device.region(0)
    bar = Mapping(device.fd, region, align=region.size, misalign=4096)
    try:
        map_and_check(
            device, iommu_mode, bar, bar.size, iova_allocator.alloc(bar.size, align=bar.size), diag
        )
    finally:
        bar.close()
