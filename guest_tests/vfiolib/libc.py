"""The few libc calls Python's os module lacks: ioctl with a return value, mmap at an address."""

from __future__ import annotations

import ctypes as C
import os
from typing import Any

_libc = C.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [C.c_int, C.c_ulong, C.c_void_p]
_libc.ioctl.restype = C.c_int
_libc.mmap.argtypes = [C.c_void_p, C.c_size_t, C.c_int, C.c_int, C.c_int, C.c_long]
_libc.mmap.restype = C.c_void_p
_libc.munmap.argtypes = [C.c_void_p, C.c_size_t]
_libc.munmap.restype = C.c_int

PROT_READ, PROT_WRITE = 0x1, 0x2
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED = 0x01, 0x02, 0x20, 0x10
MAP_NORESERVE, MAP_POPULATE, MAP_HUGETLB = 0x4000, 0x8000, 0x40000
MAP_HUGE_SHIFT = 26
MAP_FAILED = C.c_void_p(-1).value


def ioctl(
    fd: int, request: int, arg: C.Structure | C._SimpleCData[Any] | int | bytes | None = None
) -> int:
    """ioctl(2) returning its value; OSError with errno on failure (fcntl.ioctl returns the buffer)."""
    if isinstance(arg, C.Structure | C._SimpleCData):
        ptr: int | bytes | None = C.addressof(arg)
    else:
        ptr = arg
    ret = _libc.ioctl(fd, request, ptr)
    if ret < 0:
        err = C.get_errno()
        raise OSError(err, f"ioctl {request:#x}: {os.strerror(err)}")
    return int(ret)


def mmap(length: int, prot: int, flags: int, fd: int = -1, offset: int = 0, addr: int = 0) -> int:
    ptr = _libc.mmap(addr or None, length, prot, flags, fd, offset)
    if ptr is None or ptr == MAP_FAILED:
        err = C.get_errno()
        raise OSError(err, f"mmap of {length:#x} bytes: {os.strerror(err)}")
    return int(ptr)


def munmap(addr: int, length: int) -> None:
    if _libc.munmap(addr, length) != 0:
        err = C.get_errno()
        raise OSError(err, f"munmap: {os.strerror(err)}")
