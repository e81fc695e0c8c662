"""Mirrors upstream's vfio_iommufd_setup_test (its fixture `vfio_cdev`): the device cdev
and its binding to iommufd, case for case and with upstream's ids.

Each case opens the cdev and /dev/iommu afresh, as upstream's fixture does. The errnos
of the refusals are recorded as diagnostics.
"""

from __future__ import annotations

import errno
import os

import pytest

from vfiolib import libc, vfio
from vfiolib import uapi as U
from vfiolib.iommufd import Iommufd, open_cdev

TAP_FIXTURE = "vfio_cdev"  # upstream's ids: vfio_cdev.<case>
UINT32_MAX = (1 << 32) - 1


@pytest.fixture
def cdev(edu_bdf):
    vfio.require_mode("iommufd")
    fd = open_cdev(edu_bdf)
    yield fd
    os.close(fd)


@pytest.fixture
def iommufd():
    handle = Iommufd()
    yield handle
    handle.close()


def bind(cdev: int, iommufd_fd: int) -> None:
    libc.ioctl(
        cdev, U.VFIO_DEVICE_BIND_IOMMUFD, U.new(U.vfio_device_bind_iommufd, iommufd=iommufd_fd)
    )


def attach(cdev: int, pt_id: int) -> None:
    args = U.new(U.vfio_device_attach_iommufd_pt, pt_id=pt_id)
    libc.ioctl(cdev, U.VFIO_DEVICE_ATTACH_IOMMUFD_PT, args)


def refused(call) -> str:
    with pytest.raises(OSError) as info:
        call()
    return errno.errorcode.get(info.value.errno, str(info.value.errno))


def test_bind(cdev, iommufd, diag):
    bind(cdev, iommufd.fd)
    diag("device_flags", hex(vfio.device_info(cdev).flags))


def test_get_info_without_bind_fails(cdev, diag):
    diag("errno", refused(lambda: vfio.device_info(cdev)))


def test_bind_bad_iommufd_fails(cdev, diag):
    diag("errno", refused(lambda: bind(cdev, -2)))


def test_repeated_bind_fails(cdev, iommufd, diag):
    bind(cdev, iommufd.fd)
    diag("errno", refused(lambda: bind(cdev, iommufd.fd)))


def test_attach_detatch_pt(cdev, iommufd, diag):
    """Upstream's spelling, kept: the id is what parity matches on."""
    bind(cdev, iommufd.fd)
    attach(cdev, iommufd.ioas_id)
    libc.ioctl(cdev, U.VFIO_DEVICE_DETACH_IOMMUFD_PT, U.new(U.vfio_device_detach_iommufd_pt))
    diag("ioas_id", iommufd.ioas_id)


def test_attach_invalid_pt_fails(cdev, iommufd, diag):
    bind(cdev, iommufd.fd)
    diag("errno", refused(lambda: attach(cdev, UINT32_MAX)))
