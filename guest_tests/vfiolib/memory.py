"""Process memory to DMA from or to: anonymous mappings, optionally backed by hugetlb pages."""

from __future__ import annotations

import contextlib
import ctypes as C
import errno
from collections.abc import Iterator
from typing import Protocol

from vfiolib import libc
from vfiolib.iova import IovaAllocator

PAGE_4K = 4096
SIZE_2M = 2 << 20
SIZE_1G = 1 << 30

# Upstream's vfio_dma_mapping_test variants: name -> (backing page size, mmap flags)
BACKINGS = {
    "anonymous": (PAGE_4K, 0),
    "anonymous_hugetlb_2mb": (SIZE_2M, libc.MAP_HUGETLB | (21 << libc.MAP_HUGE_SHIFT)),
    "anonymous_hugetlb_1gb": (SIZE_1G, libc.MAP_HUGETLB | (30 << libc.MAP_HUGE_SHIFT)),
}


class Buffer:
    """An anonymous mapping; `close` unmaps it. Usable as a context manager."""

    def __init__(self, size: int, backing: str = "anonymous") -> None:
        page, extra = BACKINGS[backing]
        self.backing = backing
        self.page_size = page
        self.size = -(-size // page) * page
        self.addr = libc.mmap(
            self.size,
            libc.PROT_READ | libc.PROT_WRITE,
            libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_POPULATE | extra,
        )

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        n = self.size - offset if length is None else length
        self._check(offset, n)
        return C.string_at(self.addr + offset, n)

    def write(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        C.memmove(self.addr + offset, data, len(data))

    def fill(self, byte: int) -> None:
        C.memset(self.addr, byte, self.size)

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise IndexError(
                f"[{offset:#x}, +{length:#x}) is outside the {self.size:#x}-byte buffer"
            )

    def close(self) -> None:
        if self.addr:
            libc.munmap(self.addr, self.size)
            self.addr = 0

    def __enter__(self) -> Buffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DmaMapper(Protocol):
    """A device (or its container or IOAS): what maps memory for DMA."""

    def map_dma(self, vaddr: int, iova: int, size: int, writable: bool = True) -> None: ...

    def unmap_dma(self, iova: int, size: int) -> int: ...


@contextlib.contextmanager
def dma_mapped(
    device: DmaMapper, allocator: IovaAllocator, size: int
) -> Iterator[tuple[Buffer, int]]:
    """`size` bytes of process memory mapped for the device's DMA: (buffer, its IOVA),
    unmapped and freed afterwards. A test may unmap it itself first: type1 then unmaps
    0 bytes, iommufd says ENOENT, and neither is an error here."""
    with Buffer(size) as buf:
        iova = allocator.alloc(buf.size)
        device.map_dma(buf.addr, iova, buf.size)
        try:
            yield buf, iova
        finally:
            try:
                device.unmap_dma(iova, buf.size)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise


def hugepages_reserved(page_size: int, cmdline: str | None = None) -> int:
    """How many pages of `page_size` the kernel command line reserves (the lab writes
    `hugepagesz=2M hugepages=32` from the scenario's machine.hugepages)."""
    if cmdline is None:
        with open("/proc/cmdline") as f:
            cmdline = f.read()
    size, count = None, 0
    for word in cmdline.split():
        key, _, val = word.partition("=")
        if key == "hugepagesz":
            size = _parse_size(val)
        elif key == "hugepages" and size == page_size:
            count = int(val)
    return count


def _parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1:].upper() in units else int(text)


def hugepages_free(page_size: int) -> int:
    kib = page_size // 1024
    try:
        with open(f"/sys/kernel/mm/hugepages/hugepages-{kib}kB/free_hugepages") as f:
            return int(f.read())
    except FileNotFoundError:
        return 0
