"""vfiolib against a fake kernel at the os/ioctl seam: it releases what it opened when setup
fails mid-way, and refuses what the real kernel must never give (a group that is not
viable, a short config read, type1 info without IOVA ranges)."""

from __future__ import annotations

import errno

import pytest

from vfiolib import uapi as U
from vfiolib import vfio


class FakeKernel:
    def __init__(self, fail_on: int, viable: bool = True) -> None:
        self.fail_on = fail_on
        self.viable = viable
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
        if request == U.VFIO_GROUP_GET_STATUS and self.viable:
            arg.flags = U.VFIO_GROUP_FLAGS_VIABLE
        return {U.VFIO_GET_API_VERSION: 0, U.VFIO_CHECK_EXTENSION: 1}.get(request, 0)


@pytest.fixture
def fake(monkeypatch):
    def install(fail_on: int, viable: bool = True) -> FakeKernel:
        k = FakeKernel(fail_on, viable)
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


def test_a_group_that_is_not_viable_is_refused_and_everything_closed(fake):
    k = fake(fail_on=-1, viable=False)
    with pytest.raises(OSError, match="IOMMU group 7 is not viable"):
        vfio.VfioPciDevice("0000:00:03.0", "vfio_type1v2_iommu")
    assert k.open_fds == set()


def test_two_devices_share_one_container(fake, monkeypatch):
    k = fake(fail_on=-1)
    container = vfio.open_iommu("vfio_type1v2_iommu")
    a = vfio.VfioPciDevice("0000:00:03.0", container)
    b = vfio.VfioPciDevice("0000:00:04.0", container)
    assert a.iommu is b.iommu is container and a.mode == "vfio_type1v2_iommu"
    a.close()
    b.close()
    assert len(k.open_fds) == 1, "closing the devices must leave the shared container open"
    container.close()
    assert k.open_fds == set()


def test_a_short_config_read_is_an_error(fake, monkeypatch):
    fake(fail_on=-1)
    dev = vfio.VfioPciDevice("0000:00:03.0", "vfio_type1v2_iommu")
    monkeypatch.setattr(vfio.os, "pread", lambda fd, n, off: b"\x34")
    with pytest.raises(OSError, match="config read at 0x0: 1 of 2 bytes"):
        dev.config_read(0, 2)


def test_type1_info_without_iova_ranges_is_an_error(fake, monkeypatch):
    fake(fail_on=-1)
    container = vfio.Container("vfio_type1v2_iommu")
    head = U.new(U.vfio_iommu_type1_info, flags=0, iova_pgsizes=0x1000)
    monkeypatch.setattr(vfio, "info_with_caps", lambda *a, **k: bytes(head))
    with pytest.raises(OSError, match="no IOVA-range capability"):
        container.info()


def test_config_space_goes_through_pread_and_pwrite_at_the_region_offset(fake, tmp_path):
    """A vfio device fd has no lseek (the config region sits at an offset of the fd, read
    positionally): config access must use pread/pwrite, never seek then read/write."""
    fake(fail_on=-1)  # os.open and os.close are the fake kernel's from here on
    dev = vfio.VfioPciDevice("0000:00:03.0", "vfio_type1v2_iommu")
    config = vfio.Region(U.VFIO_PCI_CONFIG_REGION_INDEX, 0, 0x100, 0x7000, 0)
    backing = tmp_path / "device"
    backing.write_bytes(b"\0" * 0x7000 + bytes.fromhex("3412e811") + b"\x01\x01" + b"\0" * 0xFA)

    def no_seek(*args: object) -> int:
        raise OSError(errno.ESPIPE, "vfio device fds have no lseek")

    with open(backing, "r+b", buffering=0) as device_file, pytest.MonkeyPatch.context() as mp:
        mp.setattr(dev, "fd", device_file.fileno())
        mp.setattr(dev, "region", lambda index: config)
        mp.setattr(vfio.os, "lseek", no_seek)
        assert (dev.config_read(0, 2), dev.config_read(2, 2)) == (0x1234, 0x11E8)
        dev.set_bus_master(True)
        assert dev.config_read(4, 2) == 0x0105
    assert backing.read_bytes()[0x7004:0x7006] == b"\x05\x01"
