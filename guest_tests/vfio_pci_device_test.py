"""Mirrors upstream's vfio_pci_device_test: config space, BARs, reset, on the default mode."""

from __future__ import annotations

import os

from vfiolib import edu as E
from vfiolib import memory
from vfiolib import uapi as U
from vfiolib.iova import IovaAllocator

MIB = 1 << 20
BUS_MASTER = 0x4


def sysfs_id(bdf: str, name: str) -> int:
    with open(f"/sys/bus/pci/devices/{bdf}/{name}") as f:
        return int(f.read(), 0)


def test_config_space_read_write(default_device, diag):
    """As upstream: the IDs match what the kernel reports in sysfs, Bus Master starts clear,
    sets, and clears again."""
    bdf = default_device.bdf
    assert default_device.config_read(0, 2) == sysfs_id(bdf, "vendor")
    assert default_device.config_read(2, 2) == sysfs_id(bdf, "device")
    before = default_device.config_read(4, 2)
    diag("command_before", hex(before))
    assert not before & BUS_MASTER, "Bus Master is set before anyone asked for it"
    default_device.set_bus_master(True)
    after = default_device.config_read(4, 2)
    diag("command_after", hex(after))
    assert after & BUS_MASTER, "Bus Master did not stick in the command register"
    default_device.set_bus_master(False)
    cleared = default_device.config_read(4, 2)
    diag("command_cleared", hex(cleared))
    assert not cleared & BUS_MASTER, "Bus Master did not clear"


def test_validate_bars(default_device, diag):
    info = default_device.info()
    assert info.flags & U.VFIO_DEVICE_FLAGS_PCI
    assert info.num_regions >= U.VFIO_PCI_NUM_REGIONS
    bar0 = default_device.region(U.VFIO_PCI_BAR0_REGION_INDEX)
    diag("bar0_size", hex(bar0.size))
    diag("bar0_flags", hex(bar0.flags))
    assert bar0.size == MIB
    want = (
        U.VFIO_REGION_INFO_FLAG_READ | U.VFIO_REGION_INFO_FLAG_WRITE | U.VFIO_REGION_INFO_FLAG_MMAP
    )
    assert bar0.flags & want == want
    diag("bar0_caps", default_device.region_caps(U.VFIO_PCI_BAR0_REGION_INDEX))


def test_bar0_identification(default_device, diag):
    bar = default_device.mmap(U.VFIO_PCI_BAR0_REGION_INDEX)
    ident = bar.read32(E.IDENT)
    diag("ident", hex(ident))
    assert ident == E.IDENT_VALUE


def test_bar0_liveness(default_device):
    edu = E.Edu(default_device)
    for value in (0, 0x12345678, 0xFFFFFFFF):
        assert edu.liveness(value) == (~value & 0xFFFFFFFF)


def test_reset(default_device, edu_driver, diag):
    """As upstream, then the lab checks the device still works: its ID register and a DMA.
    The lab puts edu alone behind a PCIe root port, so vfio-pci can reset it (a secondary
    bus reset): the lab's configuration promises reset, and its absence is a failure."""
    info = default_device.info()
    diag("reset_supported", bool(info.flags & U.VFIO_DEVICE_FLAGS_RESET))
    assert info.flags & U.VFIO_DEVICE_FLAGS_RESET, "vfio-pci offers no reset for edu"
    default_device.reset()
    edu = edu_driver(default_device)
    assert edu.ident() == E.IDENT_VALUE
    allocator = IovaAllocator(default_device.iommu.info().ranges, edu.dma_mask)
    with (
        memory.dma_mapped(default_device, allocator, E.CHUNK) as (src, src_iova),
        memory.dma_mapped(default_device, allocator, E.CHUNK) as (dst, dst_iova),
    ):
        src.write(0, os.urandom(E.CHUNK))
        dst.fill(0)
        diag("bytes_copied_after_reset", edu.memcpy(src_iova, dst_iova, E.CHUNK))
        assert dst.read(0, E.CHUNK) == src.read(0, E.CHUNK), "DMA after reset copied wrong"
