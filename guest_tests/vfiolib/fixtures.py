"""Fixtures shared by guest tests: the edu device, IOMMU modes, diagnostics.

A custom payload directory gets them with `pytest_plugins = ["vfiolib.fixtures"]`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from vfiolib import edu as edu_mod
from vfiolib import pci, vfio
from vfiolib.iova import IovaAllocator


def find_vfio_devices(vendor: int, device: int) -> list[str]:
    return [bdf for bdf in pci.functions(vendor, device) if pci.driver(bdf) == "vfio-pci"]


@pytest.fixture(scope="session")
def edu_bdf() -> str:
    devices = find_vfio_devices(*edu_mod.EDU_ID)
    if not devices:
        # The lab binds edu before running us; its absence is a broken setup, not a skip.
        pytest.fail("no edu device (1234:11e8) is bound to vfio-pci")
    return devices[0]


@pytest.fixture(scope="session")
def edu_dma_mask() -> int:
    return int(os.environ.get("VFIO_LAB_EDU_DMA_MASK", hex((1 << 64) - 1)), 0)


@pytest.fixture(scope="session")
def edu_dma_delay() -> float:
    """Seconds each of edu's DMA transfers takes: the scenario's devices[].dma_delay, or
    edu's own."""
    ns = os.environ.get("VFIO_LAB_EDU_DMA_DELAY_NS")
    return edu_mod.DEFAULT_DMA_DELAY if ns is None else int(ns) / 1e9


@pytest.fixture(scope="session")
def edu_ram_bar() -> tuple[int, int]:
    """(size, BAR index) of the RAM BAR the scenario gave edu (devices[].bar, the lab's
    QEMU); skipped where it gave none, since stock edu has only its register BAR."""
    text = os.environ.get("VFIO_LAB_EDU_RAM_BAR", "")
    if not text:
        pytest.skip("edu has no RAM BAR in this scenario (devices[].bar, machine.qemu: lab)")
    size, index = (int(x, 0) for x in text.split(":"))
    return size, index


@pytest.fixture(params=vfio.MODES)
def iommu_mode(request: pytest.FixtureRequest) -> str:
    vfio.require_mode(request.param)
    return str(request.param)


def default_mode() -> str:
    """Upstream's default is iommufd; fall back through the modes this kernel offers."""
    for mode in ("iommufd", "vfio_type1v2_iommu", "iommufd_compat_type1v2", "vfio_type1_iommu"):
        if vfio.mode_available(mode):
            return mode
    pytest.fail("this kernel offers no VFIO IOMMU mode, though edu is bound to vfio-pci")


@pytest.fixture
def device(
    edu_bdf: str, iommu_mode: str, diag: Callable[[str, object], None]
) -> Iterator[vfio.VfioPciDevice]:
    diag("container_provider", vfio.container_provider())
    with vfio.VfioPciDevice(edu_bdf, iommu_mode) as dev:
        yield dev


@pytest.fixture
def default_device(edu_bdf: str) -> Iterator[vfio.VfioPciDevice]:
    with vfio.VfioPciDevice(edu_bdf, default_mode()) as dev:
        yield dev


@pytest.fixture
def iova_allocator(device: vfio.VfioPciDevice, edu_dma_mask: int) -> IovaAllocator:
    return IovaAllocator(device.iommu.info().ranges, edu_dma_mask)


@pytest.fixture(scope="session")
def edu_driver(
    edu_dma_mask: int, edu_dma_delay: float
) -> Callable[[vfio.VfioPciDevice], edu_mod.Edu]:
    """The lab's edu driver for an opened device, with the scenario's DMA mask and delay."""
    return lambda device: edu_mod.Edu(device, edu_dma_mask, edu_dma_delay)


@pytest.fixture
def edu(
    device: vfio.VfioPciDevice, edu_driver: Callable[[vfio.VfioPciDevice], edu_mod.Edu]
) -> edu_mod.Edu:
    return edu_driver(device)


@pytest.fixture
def diag(request: pytest.FixtureRequest) -> Callable[[str, object], None]:
    """Record an observation; it becomes a `# key: value` TAP diagnostic of this test."""

    def record(key: str, value: object) -> None:
        request.node.user_properties.append((key, value))

    return record
