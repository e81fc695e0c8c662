"""vfiolib releases what it opened when setup fails mid-way (fakes at the os/ioctl seam)."""

from __future__ import annotations

import errno

import pytest

from vfiolib import uapi as U
from vfiolib import vfio


class FakeKernel:
    def __init__(self, fail_on: int) -> None:
        self.fail_on = fail_on
        self.open_fds: set[int] = set()
        self.next_fd = 100

    def open(self, path: str, flags: int) -> int:
        self.next_fd += 1
        self.open_fds.add(self.next_fd)
        return self.next_fd

    def close(self, fd: int) -> None:
        self.open_fds.remove(fd)

    def ioctl(self, fd: int, request: int, arg: object = None) -> int:
        if request == self.fail_on:
            raise OSError(errno.EBUSY, "fake failure")
        if request == U.VFIO_GROUP_GET_DEVICE_FD:
            return self.open("device", 0)
        return {U.VFIO_GET_API_VERSION: 0, U.VFIO_CHECK_EXTENSION: 1}.get(request, 0)


@pytest.fixture
def fake(monkeypatch):
    def install(fail_on: int) -> FakeKernel:
        k = FakeKernel(fail_on)
        monkeypatch.setattr(vfio.os, "open", k.open)
        monkeypatch.setattr(vfio.os, "close", k.close)
        monkeypatch.setattr(vfio.libc, "ioctl", k.ioctl)
        monkeypatch.setattr(vfio, "iommu_group", lambda bdf: 7)
        return k

    return install


@pytest.mark.parametrize(
    "fail_on", [U.VFIO_GROUP_SET_CONTAINER, U.VFIO_SET_IOMMU, U.VFIO_GROUP_GET_DEVICE_FD]
)
def test_failed_open_closes_everything(fake, fail_on):
    k = fake(fail_on)
    with pytest.raises(OSError, match="fake failure"):
        vfio.VfioPciDevice("0000:00:03.0", "vfio_type1_iommu")
    assert k.open_fds == set()


def test_close_releases_container_group_and_device(fake):
    k = fake(fail_on=-1)
    dev = vfio.VfioPciDevice("0000:00:03.0", "vfio_type1v2_iommu")
    assert len(k.open_fds) == 3
    dev.close()
    assert k.open_fds == set()


def test_unsupported_iommu_type_closes_container(fake, monkeypatch):
    k = fake(fail_on=U.VFIO_CHECK_EXTENSION)
    with pytest.raises(OSError):
        vfio.Container("vfio_type1_iommu")
    assert k.open_fds == set()


def test_iommufd_mode_failed_attach_closes_everything(fake, monkeypatch):
    k = fake(fail_on=U.VFIO_DEVICE_ATTACH_IOMMUFD_PT)
    monkeypatch.setattr(vfio, "open_cdev", lambda bdf: k.open("/dev/vfio/devices/vfio0", 0))
    with pytest.raises(OSError, match="fake failure"):
        vfio.VfioPciDevice("0000:00:03.0", "iommufd")
    assert k.open_fds == set()
