"""IOVA allocation inside the ranges the IOMMU gives, as VFIO's type1 and iommufd give them."""

from __future__ import annotations

import ctypes as C
import errno

import pytest

from vfiolib import iommufd, vfio
from vfiolib import uapi as U
from vfiolib.iommufd import Iommufd
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


# SMMUv3's software MSI window (arm-smmu-v3's MSI_IOVA_BASE, MSI_IOVA_LENGTH): both type1's
# IOVA-range capability and iommufd's IOMMU_IOAS_IOVA_RANGES leave it out of the ranges.
MSI_WINDOW = (0x8000000, 0x80FFFFF)
SMMUV3_RANGES = [(0, MSI_WINDOW[0] - 1), (MSI_WINDOW[1] + 1, (1 << 48) - 1)]


def type1_info_buffer(ranges: list[tuple[int, int]]) -> bytes:
    """VFIO_IOMMU_GET_INFO's answer: the info struct, then the IOVA-range capability."""
    head = U.new(U.vfio_iommu_type1_info, flags=U.VFIO_IOMMU_INFO_CAPS, iova_pgsizes=0x40201000)
    head.cap_offset = C.sizeof(head)
    cap = U.vfio_iommu_type1_info_cap_iova_range(nr_iovas=len(ranges))
    cap.header.id = U.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE
    cap.header.version = 1
    body = b"".join(bytes(U.vfio_iova_range(start=s, end=e)) for s, e in ranges)
    return bytes(head) + bytes(cap) + body


def type1_ranges(monkeypatch, ranges):
    container = vfio.Container.__new__(vfio.Container)
    container.fd = -1
    monkeypatch.setattr(vfio, "info_with_caps", lambda *a, **k: type1_info_buffer(ranges))
    return container.info().ranges


def iommufd_ranges(monkeypatch, ranges):
    """IOMMU_IOAS_IOVA_RANGES as the kernel answers it: EMSGSIZE and the count for a
    query too small, then the ranges."""

    def ioctl(fd, request, arg=None):
        assert request == U.IOMMU_IOAS_IOVA_RANGES
        if arg.num_iovas < len(ranges):
            arg.num_iovas = len(ranges)
            raise OSError(errno.EMSGSIZE, "too small")
        out = (U.iommu_iova_range * len(ranges)).from_address(arg.allowed_iovas)
        for slot, (start, last) in zip(out, ranges, strict=True):
            slot.start, slot.last = start, last
        arg.out_iova_alignment = 4096
        return 0

    ioas = Iommufd.__new__(Iommufd)
    ioas.fd, ioas.ioas_id = -1, 1
    monkeypatch.setattr(iommufd.libc, "ioctl", ioctl)
    return ioas.info().ranges


def clear_of_the_window(iova: int, size: int) -> bool:
    return iova + size - 1 < MSI_WINDOW[0] or iova > MSI_WINDOW[1]


@pytest.mark.parametrize("query", [type1_ranges, iommufd_ranges], ids=["type1", "iommufd"])
def test_allocations_stay_out_of_the_smmuv3_msi_window(monkeypatch, query):
    ranges = query(monkeypatch, SMMUV3_RANGES)
    assert ranges == SMMUV3_RANGES
    a = IovaAllocator(ranges)
    # All but a page below the window; then 2 MiB, which would straddle it, goes above;
    # the page left below is still handed out; 1 GiB aligned lands far above.
    sizes = [MSI_WINDOW[0] - 0x101000, 0x200000, 0x1000, 1 << 30]
    aligns = [0x1000, 0x1000, 0x1000, 1 << 30]
    iovas = [a.alloc(size, align) for size, align in zip(sizes, aligns, strict=True)]
    assert iovas == [0x100000, MSI_WINDOW[1] + 1, MSI_WINDOW[0] - 0x1000, 1 << 30]
    assert all(clear_of_the_window(iova, size) for iova, size in zip(iovas, sizes, strict=True))


@pytest.mark.parametrize("query", [type1_ranges, iommufd_ranges], ids=["type1", "iommufd"])
def test_an_aligned_window_that_would_cover_the_msi_window_goes_above_it(monkeypatch, query):
    a = IovaAllocator(query(monkeypatch, SMMUV3_RANGES), start=0x7E00000)
    iova = a.alloc(0x400000, align=0x200000)  # 0x7e00000 would run to 0x81fffff
    assert iova == 0x8200000 and clear_of_the_window(iova, 0x400000)
