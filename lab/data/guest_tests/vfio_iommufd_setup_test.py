"""Equivalent of upstream's vfio_iommufd_setup_test: the device cdev and its iommufd binding.

A cdev must be bound to an iommufd before anything else works, binding takes a real
iommufd once, and attaching needs a bound device. Errnos are recorded as diagnostics.
"""

from __future__ import annotations

import errno
import os

import pytest

from vfiolib import libc, vfio
from vfiolib import uapi as U
from vfiolib.iommufd import Iommufd, bind_and_attach, open_cdev


@pytest.fixture
def cdev(edu_bdf):
    vfio.require_mode("iommufd")
    fd = open_cdev(edu_bdf)
    yield fd
    os.close(fd)


@pytest.fixture
def ioas():
    handle = Iommufd()
    yield handle
    handle.close()


def refused(call) -> str:
    with pytest.raises(OSError) as info:
        call()
    return errno.errorcode.get(info.value.errno, str(info.value.errno))


def test_device_ioctls_need_a_bound_cdev(cdev, diag):
    diag("get_info_unbound", refused(lambda: vfio.device_info(cdev)))


def test_bind_refuses_a_bad_iommufd(cdev, diag):
    bind = U.new(U.vfio_device_bind_iommufd, iommufd=-1)
    diag("bind_bad_fd", refused(lambda: libc.ioctl(cdev, U.VFIO_DEVICE_BIND_IOMMUFD, bind)))


def test_attach_needs_a_bound_device(cdev, ioas, diag):
    attach = U.new(U.vfio_device_attach_iommufd_pt, pt_id=ioas.ioas_id)
    diag(
        "attach_unbound", refused(lambda: libc.ioctl(cdev, U.VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach))
    )


def test_bind_attach_then_device_works(cdev, ioas, diag):
    devid = bind_and_attach(cdev, ioas)
    diag("devid", devid)
    assert vfio.device_info(cdev).flags & U.VFIO_DEVICE_FLAGS_PCI
    again = U.new(U.vfio_device_bind_iommufd, iommufd=ioas.fd)
    diag("bind_twice", refused(lambda: libc.ioctl(cdev, U.VFIO_DEVICE_BIND_IOMMUFD, again)))
