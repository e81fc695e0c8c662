"""Beyond upstream: VFIO DMABUF export of BAR sub-ranges (shared/seeds/002).

Export a slice of edu's BAR0 as a dma-buf, check its size, mmap it where the kernel
allows that (the RFC "mmap() of VFIO DMABUFs"), and check that it is revoked once the
device is released. Skipped on kernels whose config does not build the feature, failed
on those whose config promises it and lack it.
"""

from __future__ import annotations

import ctypes as C
import os

import pytest

from vfiolib import dmabuf, kconfig, libc
from vfiolib import edu as E

SLICE = 0x1000


@pytest.fixture
def exported(default_device, diag):
    kconfig.require(
        dmabuf.supported(default_device),
        "CONFIG_VFIO_PCI_DMABUF",
        what="VFIO_DEVICE_FEATURE_DMA_BUF",
    )
    fd = dmabuf.export(default_device, 0, [(0, SLICE)])
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
        diag("dmabuf_mmap", f"refused: {mapped.strerror}")
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
