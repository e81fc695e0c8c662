"""Mirrors upstream's vfio_pci_device_test: config space, BARs, reset, on the default mode."""

from __future__ import annotations

import pytest

from vfiolib import edu as E
from vfiolib import uapi as U

MIB = 1 << 20


def test_config_space_read_write(default_device, diag):
    assert default_device.config_read(0, 2) == E.EDU_ID[0]
    assert default_device.config_read(2, 2) == E.EDU_ID[1]
    before = default_device.config_read(4, 2)
    default_device.set_bus_master(True)
    after = default_device.config_read(4, 2)
    diag("command_before", hex(before))
    diag("command_after", hex(after))
    assert after & 0x4, "Bus Master did not stick in the command register"


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


def test_reset(default_device, diag):
    info = default_device.info()
    diag("reset_supported", bool(info.flags & U.VFIO_DEVICE_FLAGS_RESET))
    if not info.flags & U.VFIO_DEVICE_FLAGS_RESET:
        pytest.skip("device does not support reset (edu has no FLR or PM reset)")
    default_device.reset()
    assert default_device.config_read(0, 2) == E.EDU_ID[0]
