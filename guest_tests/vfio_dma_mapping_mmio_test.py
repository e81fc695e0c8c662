"""Mirrors upstream's vfio_dma_mapping_mmio_test: DMA-mapping an mmap'ed PCI BAR.

As upstream asserts it: the type1 modes (vfio_type1_iommu, vfio_type1v2_iommu) map MMIO;
the iommufd modes refuse it (iommufd pins pages, and a BAR mmap has none). With
CONFIG_IOMMUFD_VFIO_CONTAINER=y the type1 modes are served by iommufd and refuse too:
a real change for type1 users (P2P mappings are lost, shared/seeds/000), declared as a
known failure in the scenarios that build such kernels, not absorbed here.
"""

from __future__ import annotations

import errno

import pytest

from vfiolib import iopte, pfnmap

GIB = 1 << 30
PAGE = 4096
TYPE1 = ("vfio_type1_iommu", "vfio_type1v2_iommu")


def map_and_check(
    device, iommu_mode, region, size: int, iova: int, diag, align: int = 0, misalign: int = 0
) -> None:
    """mmaps the BAR `region` with `align` and `misalign` (vfio.mmap_aligned): one mapping
    to DMA-map, and each one the CPU-side observation needs, untouched, so that reading it
    is sure to fault."""

    def fresh():
        return device.mmap(region.index, align, misalign)

    bar = fresh()
    diag("vaddr_offset_alignment", hex(bar.addr % max(size, PAGE)))
    # What the CPU got: upstream's point is that only an aligned mmap can be huge. The
    # same layout in another IOMMU mode faults the same way: measured once per process.
    cpu = pfnmap.fault_size(fresh, (device.bdf, region.index, align, misalign))
    diag("cpu_map_size", iopte.human(cpu) if isinstance(cpu, int) else cpu)
    if iommu_mode in TYPE1:
        try:
            device.map_dma(bar.addr, iova, size)
        except OSError as e:
            diag("errno", errno.errorcode.get(e.errno, e.errno))
            raise AssertionError(f"{iommu_mode} must map MMIO; the kernel said: {e}") from e
        # A huge pfnmap of an aligned BAR lets the IOMMU map it with huge IOPTEs too.
        if (seen := iopte.recorded(iopte.iopte_size(device.bdf, iova))) is not None:
            diag("iopte_size", seen)
        unmapped = device.unmap_dma(iova, size)
        diag("unmapped", hex(unmapped))
        assert unmapped == size
        return
    with pytest.raises(OSError) as refused:
        device.map_dma(bar.addr, iova, size)
    diag("errno", errno.errorcode.get(refused.value.errno, refused.value.errno))
    # Nothing was mapped, so unmapping finds nothing: iommufd's IOAS refuses (ENOENT), its
    # type1 emulation unmaps 0 bytes, as VFIO's own container would.
    try:
        unmapped = device.unmap_dma(iova, size)
    except OSError as e:
        diag("unmap_errno", errno.errorcode.get(e.errno, e.errno))
        assert e.errno == errno.ENOENT, f"unmapping nothing failed with {e}"
    else:
        diag("unmapped", hex(unmapped))
        assert unmapped == 0, f"a refused map left {unmapped:#x} bytes to unmap"


@pytest.fixture
def largest(device, diag):
    """The BAR upstream picks: the largest one that can be mmap'ed, read and written."""
    region = device.largest_bar()
    diag("bar_index", region.index)
    diag("bar_size", hex(region.size))
    return region


def test_map_full_bar(device, iommu_mode, largest, iova_allocator, diag):
    size = largest.size
    iova = iova_allocator.alloc(size, min(size, GIB))
    map_and_check(device, iommu_mode, largest, size, iova, diag)


def test_map_partial_bar(device, iommu_mode, largest, iova_allocator, diag):
    if largest.size < 2 * PAGE:
        pytest.skip(f"BAR{largest.index} too small for a partial mapping (size={largest.size:#x})")
    iova = iova_allocator.alloc(PAGE)
    map_and_check(device, iommu_mode, largest, PAGE, iova, diag)


def test_map_bar_misaligned(device, iommu_mode, largest, iova_allocator, diag):
    # vaddr % 1 GiB == one page, as upstream: no huge pfnmap can back this mmap.
    size = min(largest.size, GIB)
    iova = iova_allocator.alloc(size, align=min(size, GIB))
    map_and_check(device, iommu_mode, largest, size, iova, diag, align=GIB, misalign=PAGE)
