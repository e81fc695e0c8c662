"""Beyond upstream: VFIO DMABUF export of BAR sub-ranges (shared/seeds/002).

Export a slice of edu's BAR0 as a dma-buf, check its size, mmap it where the kernel
allows that (the RFC "mmap() of VFIO DMABUFs"; EINVAL, dma-buf's answer for an exporter
without mmap, is the only skip), and check that it is revoked once the device is
released. Skipped on kernels whose config does not build the feature, failed
on those whose config promises it and lack it.
"""

from __future__ import annotations

import ctypes as C
import errno
import os
from dataclasses import dataclass

import pytest

from vfiolib import dmabuf, kconfig, libc, memory, vfio
from vfiolib import edu as E
from vfiolib.iommufd import Iommufd
from vfiolib.iova import IovaAllocator

SLICE = 0x1000


@pytest.fixture
def exporting(default_device):
    """The device, once the kernel is known to export dma-bufs: skipped where its config
    does not build the feature, failed where the config promises it and it is missing."""
    kconfig.require(
        dmabuf.supported(default_device),
        "CONFIG_VFIO_PCI_DMABUF",
        what="VFIO_DEVICE_FEATURE_DMA_BUF",
    )
    return default_device


@pytest.fixture
def exported(exporting, diag):
    fd = dmabuf.export(exporting, 0, [(0, SLICE)])
    yield fd
    os.close(fd)


def try_mmap(fd: int) -> int | OSError:
    try:
        return libc.mmap(SLICE, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd, 0)
    except OSError as e:
        return e


def test_export_bar_slice(exported, diag):
    size = os.lseek(exported, 0, os.SEEK_END)
    diag("dmabuf_size", hex(size))
    assert size == SLICE


def test_mmap_then_revoke_on_release(default_device, exported, diag):
    mapped = try_mmap(exported)
    if isinstance(mapped, OSError):
        diag("dmabuf_mmap", f"refused: {errno.errorcode.get(mapped.errno, mapped.errno)}")
        if not dmabuf.mmap_not_offered(mapped):
            raise mapped
        pytest.skip(f"this kernel does not mmap VFIO dma-bufs ({mapped.strerror})")
    try:
        ident = C.c_uint32.from_address(mapped + E.IDENT).value
        diag("ident_via_dmabuf", hex(ident))
        assert ident == E.IDENT_VALUE
    finally:
        libc.munmap(mapped, SLICE)
    default_device.close()  # releasing the device revokes its dma-bufs
    after = try_mmap(exported)
    diag("mmap_after_release", "refused" if isinstance(after, OSError) else "allowed")
    if not isinstance(after, OSError):
        libc.munmap(after, SLICE)
    assert isinstance(after, OSError), "a dma-buf of a released device can still be mapped"


# -- the tweaked edu's RAM BAR (devices[].bar): ranges beyond one register page ----------
MIB = 1 << 20


@pytest.fixture
def ram_bar(exporting, edu_ram_bar):
    return E.ram_bar(exporting, edu_ram_bar)


def exported_size(device, region, ranges) -> int:
    fd = dmabuf.export(device, region.index, ranges)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def test_export_ram_bar_ranges(default_device, ram_bar, diag):
    """One range deep in the BAR, several ranges at once, and two dma-bufs over the same
    bytes: each dma-buf is as long as its ranges together."""
    one = [(ram_bar.size // 2, 2 * MIB)]
    several = [(0, SLICE), (MIB, 2 * SLICE), (ram_bar.size - SLICE, SLICE)]
    sizes = {
        "single": exported_size(default_device, ram_bar, one),
        "multiple": exported_size(default_device, ram_bar, several),
    }
    first = dmabuf.export(default_device, ram_bar.index, [(0, 2 * SLICE)])
    second = dmabuf.export(default_device, ram_bar.index, [(SLICE, 2 * SLICE)])
    try:
        sizes["overlapping"] = os.lseek(first, 0, os.SEEK_END) + os.lseek(second, 0, os.SEEK_END)
    finally:
        os.close(first)
        os.close(second)
    for name, size in sizes.items():
        diag(f"dmabuf_size_{name}", hex(size))
    assert sizes == {"single": 2 * MIB, "multiple": 4 * SLICE, "overlapping": 4 * SLICE}


@dataclass
class Imported:
    """A range at the end of the RAM BAR, exported and mapped at `iova` in the device's IOAS."""

    ioas: Iommufd
    iova: int
    offset: int
    length: int


@pytest.fixture
def imported(default_device, ram_bar, edu_dma_mask, diag):
    """Export the BAR's last 2 MiB and map the dma-buf into the device's own IOAS
    (IOMMU_IOAS_MAP_FILE). Skipped where the kernel's iommufd does not import dma-bufs."""
    if not isinstance(default_device.iommu, Iommufd):
        vfio.require_mode("iommufd")  # skips or fails by the config, naming the option
    ioas = default_device.iommu
    length = 2 * MIB
    offset = ram_bar.size - length
    fd = dmabuf.export(default_device, ram_bar.index, [(offset, length)])
    iova = IovaAllocator(ioas.info().ranges, edu_dma_mask).alloc(length, align=length)
    try:
        try:
            ioas.map_file(fd, 0, length, iova)
        except OSError as e:
            diag("map_file_errno", errno.errorcode.get(e.errno, e.errno))
            # ENOTTY: no IOMMU_IOAS_MAP_FILE at all; EOPNOTSUPP: it maps memfds only. Any
            # other refusal is a broken import, not an absent one.
            if e.errno not in (errno.ENOTTY, errno.EOPNOTSUPP):
                raise
            pytest.skip(f"this kernel's iommufd does not import VFIO dma-bufs ({e.strerror})")
        yield Imported(ioas, iova, offset, length)
    finally:
        os.close(fd)


def dma_lands(device, ram_bar, edu_driver, imported: Imported) -> bool:
    """Whether a chunk edu copies out to the imported IOVA shows up in the BAR's mmap."""
    bar = device.mmap(ram_bar.index)
    edu = edu_driver(device)
    allocator = IovaAllocator(imported.ioas.info().ranges, edu.dma_mask)
    with memory.dma_mapped(device, allocator, E.CHUNK) as (src, src_iova):
        pattern = os.urandom(E.CHUNK)
        src.write(0, pattern)
        bar.write(imported.offset, b"\0" * E.CHUNK)
        edu.to_device(src_iova, E.CHUNK)
        edu.from_device(imported.iova, E.CHUNK)
        return bar.read(imported.offset, E.CHUNK) == pattern


def test_dma_through_an_imported_dmabuf(default_device, ram_bar, edu_driver, imported, diag):
    """edu's DMA through the IOVA of an imported dma-buf lands in the BAR."""
    landed = dma_lands(default_device, ram_bar, edu_driver, imported)
    diag("bytes_verified", E.CHUNK if landed else 0)
    assert landed, "the DMA through the imported dma-buf did not land in the BAR"
    assert imported.ioas.unmap_dma(imported.iova, imported.length) == imported.length


def test_reset_revokes_an_imported_dmabuf(default_device, ram_bar, edu_driver, imported, diag):
    """The importer sees the revoke: resetting the exporting device (VFIO_DEVICE_RESET)
    revokes its dma-bufs, iommufd unmaps their IOVAs and keeps them unmapped once the
    device is back, so edu's DMA there no longer lands (the IOMMU faults it instead).
    The IOVA range stays reserved in the IOAS until it is unmapped."""
    assert dma_lands(default_device, ram_bar, edu_driver, imported), "no DMA before reset"
    default_device.reset()
    landed = dma_lands(default_device, ram_bar, edu_driver, imported)
    diag("dma_after_reset", "landed" if landed else "faulted")
    assert not landed, "DMA through a revoked dma-buf still reaches the BAR"
    assert imported.ioas.unmap_dma(imported.iova, imported.length) == imported.length
