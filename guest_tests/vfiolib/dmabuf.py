"""VFIO DMABUF export (VFIO_DEVICE_FEATURE_DMA_BUF): BAR ranges as dma-buf file descriptors."""

from __future__ import annotations

import ctypes as C
import errno
import os

from vfiolib import libc
from vfiolib import uapi as U
from vfiolib.vfio import VfioPciDevice


def _feature(device: VfioPciDevice, flags: int, payload: bytes) -> int:
    head = U.new(U.vfio_device_feature, flags=flags)
    buf = bytes(head) + payload
    raw = (C.c_uint8 * len(buf)).from_buffer_copy(buf)
    U.vfio_device_feature.from_buffer(raw).argsz = len(buf)
    return libc.ioctl(device.fd, U.VFIO_DEVICE_FEATURE, C.addressof(raw))


def supported(device: VfioPciDevice) -> bool:
    """Whether the device exports dma-bufs. ENOTTY: the kernel has no such feature;
    EOPNOTSUPP: the device's driver cannot. Anything else (EINVAL: a malformed probe) is
    an error of its own, not an answer."""
    flags = U.VFIO_DEVICE_FEATURE_PROBE | U.VFIO_DEVICE_FEATURE_GET | U.VFIO_DEVICE_FEATURE_DMA_BUF
    try:
        _feature(device, flags, b"")
    except OSError as e:
        if e.errno in (errno.ENOTTY, errno.EOPNOTSUPP):
            return False
        raise
    return True


def export(device: VfioPciDevice, region: int, ranges: list[tuple[int, int]]) -> int:
    """A dma-buf fd for (offset, length) slices of a region."""
    desc = U.vfio_device_feature_dma_buf(
        region_index=region, open_flags=os.O_RDWR | os.O_CLOEXEC, flags=0, nr_ranges=len(ranges)
    )
    payload = bytes(desc) + b"".join(
        bytes(U.vfio_region_dma_range(offset=o, length=n)) for o, n in ranges
    )
    return _feature(device, U.VFIO_DEVICE_FEATURE_GET | U.VFIO_DEVICE_FEATURE_DMA_BUF, payload)


def mmap_not_offered(e: OSError) -> bool:
    """Whether a refused mmap of a dma-buf means the exporter offers none. dma-buf's own
    mmap (drivers/dma-buf/dma-buf.c, dma_buf_mmap_internal) answers EINVAL where the
    exporter has no mmap op, as vfio-pci's has none upstream; any other errno (EACCES,
    ENODEV of a revoked buffer, ENOMEM...) is an mmap that was offered and failed."""
    return e.errno == errno.EINVAL
