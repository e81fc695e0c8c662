"""Beyond upstream: peer-to-peer DMA through the vIOMMU, with the tweaked edu's RAM BAR.

The BAR's mmap is DMA-mapped as vfio_dma_mapping_mmio_test maps it, and then really
used: edu's DMA engine copies into the BAR and out of it through that IOVA, and the
bytes are checked through the BAR's mmap. Only the type1 modes map MMIO (iommufd pins
pages, a BAR has none; its way is a dma-buf, see vfio_pci_dmabuf_test). Needs a RAM BAR
(devices[].bar, machine.qemu: lab); skipped where the scenario gives edu none.
"""

from __future__ import annotations

import os

import pytest

from vfiolib import edu as E
from vfiolib import iopte, memory

GIB = 1 << 30
TYPE1 = ("vfio_type1_iommu", "vfio_type1v2_iommu")
# Deep inside the BAR, so that an IOVA that only reached its first pages would show.
OFFSET_FROM_END = 3 * E.CHUNK


@pytest.fixture
def bar_at_iova(device, edu_ram_bar, iova_allocator, diag):
    """The whole RAM BAR, mmap'ed and DMA-mapped: (mapping, IOVA of its first byte)."""
    region = E.ram_bar(device, edu_ram_bar)
    bar = device.mmap(region.index)
    iova = iova_allocator.alloc(bar.size, align=min(bar.size, GIB))
    device.map_dma(bar.addr, iova, bar.size)
    diag("bar_iova", hex(iova))
    if (seen := iopte.recorded(iopte.iopte_size(device.bdf, iova))) is not None:
        diag("iopte_size", seen)
    yield bar, iova
    device.unmap_dma(iova, bar.size)


@pytest.fixture
def ram(device, iova_allocator):
    """A page of process memory, DMA-mapped: (buffer, its IOVA)."""
    with memory.dma_mapped(device, iova_allocator, memory.PAGE_4K) as buf_and_iova:
        yield buf_and_iova


@pytest.mark.parametrize("iommu_mode", TYPE1, indirect=True)
def test_dma_into_bar(device, iommu_mode, edu, bar_at_iova, ram, diag):
    """RAM -> edu -> the BAR, through the IOMMU; read back through the BAR's mmap."""
    (bar, bar_iova), (buf, buf_iova) = bar_at_iova, ram
    offset = bar.size - OFFSET_FROM_END
    pattern = os.urandom(E.CHUNK)
    buf.write(0, pattern)
    bar.write(offset, b"\0" * E.CHUNK)
    edu.to_device(buf_iova, E.CHUNK)
    edu.from_device(bar_iova + offset, E.CHUNK)
    diag("bar_offset", hex(offset))
    landed = bar.read(offset, E.CHUNK) == pattern
    diag("bytes_verified", E.CHUNK if landed else 0)
    assert landed, "the DMA into the BAR's IOVA did not land in the BAR"


@pytest.mark.parametrize("iommu_mode", TYPE1, indirect=True)
def test_dma_from_bar(device, iommu_mode, edu, bar_at_iova, ram, diag):
    """The BAR -> edu -> RAM, through the IOMMU; the RAM holds what the BAR held."""
    (bar, bar_iova), (buf, buf_iova) = bar_at_iova, ram
    offset = bar.size - OFFSET_FROM_END
    pattern = os.urandom(E.CHUNK)
    bar.write(offset, pattern)
    buf.fill(0)
    edu.to_device(bar_iova + offset, E.CHUNK)
    edu.from_device(buf_iova, E.CHUNK)
    diag("bar_offset", hex(offset))
    landed = buf.read(0, E.CHUNK) == pattern
    diag("bytes_verified", E.CHUNK if landed else 0)
    assert landed, "the DMA from the BAR's IOVA did not bring the BAR's bytes"
