"""Mirrors upstream's vfio_dma_map_limit_test: the top of the IOVA space, unmap-all, overflow."""

from __future__ import annotations

import errno
import os

import pytest

from vfiolib import memory, vfio

SIZE = memory.PAGE_4K


@pytest.fixture
def top_region(device, diag):
    """A page mapped at the highest IOVA the IOMMU allows."""
    last = max(end for _, end in device.iommu.info().ranges)
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
    unmapped = device.iommu.unmap_all()
    diag("unmapped", hex(unmapped))
    assert unmapped == SIZE


def expected_overflow_errno(mode: str) -> int:
    """What the kernel must say to a map or unmap whose IOVA range wraps past 2**64.
    iommufd has always said EOVERFLOW; VFIO's type1 container said EINVAL until the
    series that handles the top of the IOVA space (Linux 6.19, "vfio: handle DMA
    map/unmap up to the addressable limit", 20251028-fix-unmap-v6-0-2542b96bcc8e@fb.com),
    which upstream's test asserts. The vfio_type1 modes are served by iommufd under
    CONFIG_IOMMUFD_VFIO_CONTAINER=y."""
    served_by_vfio = mode.startswith("vfio_type1") and vfio.container_provider() == "vfio"
    if served_by_vfio and kernel_release() < (6, 19):
        return errno.EINVAL
    return errno.EOVERFLOW


def kernel_release() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int(minor)


def test_overflow(device, iommu_mode, top_region, diag):
    # Page-aligned, so only the wrap past 2**64 is wrong.
    want = expected_overflow_errno(iommu_mode)
    diag("expected_errno", errno.errorcode[want])
    iova = (1 << 64) - SIZE
    with memory.Buffer(2 * SIZE) as buf, pytest.raises(OSError) as refused:
        device.map_dma(buf.addr, iova, 2 * SIZE)
    diag("map_errno", errno.errorcode.get(refused.value.errno, refused.value.errno))
    with pytest.raises(OSError) as unmap_refused:
        device.unmap_dma(iova, 2 * SIZE)
    diag("unmap_errno", errno.errorcode.get(unmap_refused.value.errno, unmap_refused.value.errno))
    assert (refused.value.errno, unmap_refused.value.errno) == (want, want)
