"""Beyond upstream: type1 v1 against v2 unmap semantics, and who serves them.

VFIO's own container (drivers/vfio/vfio_iommu_type1.c): in v1, an unmap that starts
inside a mapping succeeds and unmaps nothing, one that covers the mapping's first
IOVA unmaps the whole mapping; v2 refuses to bisect a mapping. iommufd's emulation
(drivers/iommu/iommufd/vfio_compat.c) cuts its areas for v1, so exactly the slice is
unmapped, and refuses v2 bisection as well.

Each mode is held to its own semantics: the vfio_type1 modes to VFIO's container's, the
iommufd_compat modes to iommufd's. With CONFIG_IOMMUFD_VFIO_CONTAINER=y the vfio_type1
v1 mode gets iommufd's semantics instead: a known difference, declared as an expectation
in the scenarios that build such kernels. The `container_provider` diagnostic says who served it.
"""

from __future__ import annotations

import errno

import pytest

from vfiolib import memory, vfio

PAGE = memory.PAGE_4K


def attempt(device, iova: int, size: int) -> int | str:
    try:
        return device.unmap_dma(iova, size)
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


@pytest.mark.parametrize("iommu_mode", vfio.TYPE1_MODES, indirect=True)
def test_unmap_slice_of_a_mapping(device, iommu_mode, iova_allocator, diag):
    semantics = "iommufd" if iommu_mode.startswith("iommufd") else "vfio"
    diag("expected_semantics", semantics)
    with memory.Buffer(2 * PAGE) as buf:
        iova = iova_allocator.alloc(2 * PAGE)
        device.map_dma(buf.addr, iova, 2 * PAGE)
        inner = attempt(device, iova + PAGE, PAGE)  # starts inside the mapping
        first = attempt(device, iova, PAGE)  # covers its first IOVA
        diag("unmap_inner_page", inner)
        diag("unmap_first_page", first)
        rest = attempt(device, iova, 2 * PAGE)  # whatever is left, so nothing leaks
        diag("unmap_rest", rest)
    if "type1v2" in iommu_mode:
        assert isinstance(inner, str) and isinstance(first, str), (
            "v2 must refuse to bisect a mapping"
        )
    elif semantics == "vfio":
        assert (inner, first) == (0, 2 * PAGE)
    else:
        assert (inner, first) == (PAGE, PAGE)
