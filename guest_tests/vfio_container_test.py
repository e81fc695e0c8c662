"""Container and group setup in every legacy mode: viable group, IOMMU set, device fd."""

from __future__ import annotations

import os

import pytest

from vfiolib import uapi as U
from vfiolib import vfio


@pytest.mark.parametrize("iommu_mode", vfio.LEGACY_MODES, indirect=True)
def test_container_setup(edu_bdf, iommu_mode, diag):
    group = vfio.Group(vfio.iommu_group(edu_bdf))
    container = vfio.Container(iommu_mode)
    try:
        group.check_viable()
        container.attach(group)
        assert group.status() & U.VFIO_GROUP_FLAGS_CONTAINER_SET
        fd = group.device_fd(edu_bdf)
        try:
            assert vfio.device_info(fd).flags & U.VFIO_DEVICE_FLAGS_PCI
        finally:
            os.close(fd)
        info = container.info()
        diag("container_provider", vfio.container_provider())
        diag("iova_pgsizes", hex(info.pgsizes))
        diag("iova_ranges", " ".join(f"{s:#x}-{e:#x}" for s, e in info.ranges))
        assert info.pgsizes & 0x1000, "4 KiB IOVA pages must be supported"
    finally:
        container.close()
        group.close()
