"""VFIO containers, groups and PCI devices, in each of upstream's IOMMU modes."""

from __future__ import annotations

import contextlib
import ctypes as C
import errno
import os
import subprocess
from dataclasses import dataclass

from vfiolib import kconfig, libc
from vfiolib import uapi as U
from vfiolib.iommufd import Iommufd, IommuInfo, bind_and_attach, open_cdev

# Upstream's names (tools/testing/selftests/vfio/lib): the container each mode opens
# and the IOMMU type it sets; `iommufd` uses the device cdev instead.
LEGACY_MODES = {
    "vfio_type1_iommu": ("/dev/vfio/vfio", U.VFIO_TYPE1_IOMMU),
    "vfio_type1v2_iommu": ("/dev/vfio/vfio", U.VFIO_TYPE1v2_IOMMU),
    "iommufd_compat_type1": ("/dev/iommu", U.VFIO_TYPE1_IOMMU),
    "iommufd_compat_type1v2": ("/dev/iommu", U.VFIO_TYPE1v2_IOMMU),
}
MODES = (*LEGACY_MODES, "iommufd")
TYPE1_MODES = (
    "vfio_type1_iommu",
    "vfio_type1v2_iommu",
    "iommufd_compat_type1",
    "iommufd_compat_type1v2",
)


def require_mode(mode: str) -> None:
    """Skip `mode` when this kernel's config does not build it; fail when the config
    promises it and the device node is missing."""
    if mode.startswith("vfio_type1"):
        kconfig.require(
            os.path.exists("/dev/vfio/vfio"),
            "CONFIG_VFIO_CONTAINER",
            "CONFIG_IOMMUFD_VFIO_CONTAINER",
            what="/dev/vfio/vfio",
        )
        return
    kconfig.require(os.path.exists("/dev/iommu"), "CONFIG_IOMMUFD", what="/dev/iommu")
    if mode == "iommufd":
        kconfig.require(
            os.path.isdir("/dev/vfio/devices"), "CONFIG_VFIO_DEVICE_CDEV", what="/dev/vfio/devices"
        )


def mode_available(mode: str) -> bool:
    """Whether the kernel offers `mode` right now (for choosing a default, not for verdicts)."""
    if mode.startswith("vfio_type1"):
        return os.path.exists("/dev/vfio/vfio")
    return os.path.exists("/dev/iommu") and (
        mode != "iommufd" or os.path.isdir("/dev/vfio/devices")
    )


def container_provider() -> str:
    """Who provides /dev/vfio/vfio: 'vfio', 'iommufd' (CONFIG_IOMMUFD_VFIO_CONTAINER) or 'none'."""
    if not os.path.exists("/dev/vfio/vfio"):
        return "none"
    configured = kconfig.value("CONFIG_IOMMUFD_VFIO_CONTAINER")
    if configured is not None:
        return "iommufd" if configured == "y" else "vfio"
    # No config known (a shell outside a lab run): iommufd says so in the kernel log on
    # the first open of /dev/vfio/vfio.
    os.close(os.open("/dev/vfio/vfio", os.O_RDWR))
    log = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
    return "iommufd" if "IOMMUFD is providing /dev/vfio/vfio" in log else "vfio"


@dataclass(frozen=True)
class Region:
    index: int
    flags: int
    size: int
    offset: int
    cap_offset: int


class Container:
    """A type1 container: /dev/vfio/vfio, or /dev/iommu in iommufd's compat modes."""

    def __init__(self, mode: str) -> None:
        path, self.iommu_type = LEGACY_MODES[mode]
        self.mode = mode
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self.iommu_set = False
        try:
            version = libc.ioctl(self.fd, U.VFIO_GET_API_VERSION)
            if version != U.VFIO_API_VERSION:
                raise OSError(f"{path}: API version {version}, expected {U.VFIO_API_VERSION}")
            if not libc.ioctl(self.fd, U.VFIO_CHECK_EXTENSION, self.iommu_type):
                raise OSError(f"{path} does not support IOMMU type {self.iommu_type}")
        except BaseException:
            os.close(self.fd)
            raise

    def attach(self, group: Group) -> None:
        group.set_container(self)
        if not self.iommu_set:
            libc.ioctl(self.fd, U.VFIO_SET_IOMMU, self.iommu_type)
            self.iommu_set = True

    def map_dma(self, vaddr: int, iova: int, size: int, writable: bool = True) -> None:
        flags = U.VFIO_DMA_MAP_FLAG_READ | (U.VFIO_DMA_MAP_FLAG_WRITE if writable else 0)
        args = U.new(U.vfio_iommu_type1_dma_map, flags=flags, vaddr=vaddr, iova=iova, size=size)
        libc.ioctl(self.fd, U.VFIO_IOMMU_MAP_DMA, args)

    def unmap_dma(self, iova: int, size: int) -> int:
        """Returns how many bytes the kernel says it unmapped."""
        return self._unmap(iova, size, 0)

    def unmap_all(self) -> int:
        return self._unmap(0, 0, U.VFIO_DMA_UNMAP_FLAG_ALL)

    def _unmap(self, iova: int, size: int, flags: int) -> int:
        args = U.new(U.vfio_iommu_type1_dma_unmap, flags=flags, iova=iova, size=size)
        libc.ioctl(self.fd, U.VFIO_IOMMU_UNMAP_DMA, args)
        return int(args.size)

    def info(self) -> IommuInfo:
        """The IOVA page sizes and ranges from VFIO_IOMMU_GET_INFO and its capability chain.
        Every kernel since 5.4 gives the IOVA-range capability (VFIO's container and
        iommufd's alike): its absence is an error, not "all of the IOVA space"."""
        buf = info_with_caps(self.fd, U.VFIO_IOMMU_GET_INFO, U.vfio_iommu_type1_info)
        info = U.vfio_iommu_type1_info.from_buffer_copy(buf)
        caps = walk_caps(buf, info.cap_offset) if info.flags & U.VFIO_IOMMU_INFO_CAPS else []
        found = [off for cap_id, off in caps if cap_id == U.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE]
        if not found:
            raise OSError(errno.ENODATA, "VFIO_IOMMU_GET_INFO gave no IOVA-range capability")
        return IommuInfo(int(info.iova_pgsizes), _iova_ranges(buf, found[0]))

    def close(self) -> None:
        os.close(self.fd)


def info_with_caps(fd: int, request: int, struct_type: type[C.Structure], **fields: int) -> bytes:
    """An argsz-sized *_INFO query: once for the size the kernel wants (the capability chain
    follows the struct), then again into a buffer that large; returns the buffer."""
    head = U.new(struct_type, **fields)
    libc.ioctl(fd, request, head)
    buf = (C.c_uint8 * max(head.argsz, C.sizeof(head)))()
    C.memmove(buf, C.addressof(head), C.sizeof(head))
    struct_type.from_buffer(buf).argsz = len(buf)
    libc.ioctl(fd, request, C.addressof(buf))
    return bytes(buf)


def walk_caps(buf: bytes, offset: int) -> list[tuple[int, int]]:
    """(capability id, offset) along a VFIO info capability chain."""
    caps = []
    seen = set()
    while offset and offset not in seen and offset + C.sizeof(U.vfio_info_cap_header) <= len(buf):
        seen.add(offset)
        hdr = U.vfio_info_cap_header.from_buffer_copy(buf, offset)
        caps.append((int(hdr.id), offset))
        offset = int(hdr.next)
    return caps


def _iova_ranges(buf: bytes, off: int) -> list[tuple[int, int]]:
    cap = U.vfio_iommu_type1_info_cap_iova_range.from_buffer_copy(buf, off)
    base = off + C.sizeof(U.vfio_iommu_type1_info_cap_iova_range)
    step = C.sizeof(U.vfio_iova_range)
    out = []
    for i in range(cap.nr_iovas):
        r = U.vfio_iova_range.from_buffer_copy(buf, base + i * step)
        out.append((int(r.start), int(r.end)))
    return out


def iommu_group(bdf: str) -> int:
    return int(os.path.basename(os.readlink(f"/sys/bus/pci/devices/{bdf}/iommu_group")))


class Group:
    def __init__(self, number: int) -> None:
        self.number = number
        self.fd = os.open(f"/dev/vfio/{number}", os.O_RDWR | os.O_CLOEXEC)

    def status(self) -> int:
        st = U.new(U.vfio_group_status)
        libc.ioctl(self.fd, U.VFIO_GROUP_GET_STATUS, st)
        return int(st.flags)

    def check_viable(self) -> None:
        """A group is usable only when every device in it is bound to a VFIO-safe driver."""
        if not self.status() & U.VFIO_GROUP_FLAGS_VIABLE:
            raise OSError(
                errno.EPERM,
                f"IOMMU group {self.number} is not viable (a device of it has a host driver)",
            )

    def set_container(self, container: Container) -> None:
        fd = C.c_int32(container.fd)
        libc.ioctl(self.fd, U.VFIO_GROUP_SET_CONTAINER, fd)

    def device_fd(self, bdf: str) -> int:
        return libc.ioctl(self.fd, U.VFIO_GROUP_GET_DEVICE_FD, bdf.encode())

    def close(self) -> None:
        os.close(self.fd)


def device_info(fd: int) -> U.vfio_device_info:
    info = U.new(U.vfio_device_info)
    libc.ioctl(fd, U.VFIO_DEVICE_GET_INFO, info)
    return info


class Mapping:
    """An mmap of a device region, accessed only in aligned 4- and 8-byte loads and stores.

    edu's registers take 4- and 8-byte accesses only: on arm64 a 1- or 2-byte read of its
    BAR through vfio-pci is a synchronous external abort (a guest Oops), and a memcpy
    (ctypes.string_at, memmove, bytes() of an array over the mapping) may use 1-, 2- or
    16-byte accesses, unaligned ones included. Indexing a ctypes c_uint32 array loads or
    stores each element with one access of its size, so bulk copies go word by word.
    """

    def __init__(self, fd: int, region: Region, align: int = 0, misalign: int = 0) -> None:
        self.size = region.size
        self.addr = mmap_aligned(fd, region.offset, region.size, align, misalign)

    def _at(self, off: int, length: int, width: int) -> int:
        """The address of [off, off + length), refused unless inside the mapping and
        `width`-aligned in offset and length."""
        if not self.addr:
            raise ValueError("the mapping is closed")
        if off < 0 or length < 0 or off + length > self.size:
            raise ValueError(f"[{off:#x}, +{length:#x}) is outside the {self.size:#x}-byte mapping")
        if off % width or length % width:
            raise ValueError(
                f"[{off:#x}, +{length:#x}) is not {width}-byte aligned: "
                f"the mapping is accessed in aligned {width}-byte words only"
            )
        return self.addr + off

    def read32(self, off: int) -> int:
        return int(C.c_uint32.from_address(self._at(off, 4, 4)).value)

    def write32(self, off: int, value: int) -> None:
        C.c_uint32.from_address(self._at(off, 4, 4)).value = value

    def read64(self, off: int) -> int:
        return int(C.c_uint64.from_address(self._at(off, 8, 8)).value)

    def write64(self, off: int, value: int) -> None:
        C.c_uint64.from_address(self._at(off, 8, 8)).value = value

    def read(self, off: int, length: int) -> bytes:
        """`length` bytes from `off`, both multiples of 4, read one word at a time."""
        words = words_at(self._at(off, length, 4), length // 4)
        return bytes((C.c_uint32 * len(words))(*words[:]))

    def write(self, off: int, data: bytes) -> None:
        """`data` at `off`, both multiples of 4, written one word at a time."""
        words = words_at(self._at(off, len(data), 4), len(data) // 4)
        values: list[C.c_uint32 | int] = list(memoryview(data).cast("I"))
        words[:] = values

    def close(self) -> None:
        if self.addr:
            libc.munmap(self.addr, self.size)
            self.addr = 0


def words_at(addr: int, count: int) -> C.Array[C.c_uint32]:
    """`count` 32-bit words at `addr`: a slice of it loads, an assignment to a slice
    stores, each word with one 4-byte access."""
    return (C.c_uint32 * count).from_address(addr)


def mmap_aligned(fd: int, offset: int, size: int, align: int = 0, misalign: int = 0) -> int:
    """mmap so that vaddr % align == (offset + misalign) % align. With misalign 0 that is
    what lets the kernel use huge pfnmaps; a page-sized misalign rules them out on purpose.

    `align` defaults to the largest power of two up to 1 GiB that does not exceed `size`.
    """
    if not align:
        align = min(1 << 30, 1 << (size.bit_length() - 1))
    # Reserve enough address space to find an address with the right alignment, then map there.
    span = size + align
    reserve = libc.mmap(span, 0, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE)
    want = (offset + misalign) % align
    addr = reserve - (reserve % align) + want
    if addr < reserve:
        addr += align
    try:
        return libc.mmap(
            size,
            libc.PROT_READ | libc.PROT_WRITE,
            libc.MAP_SHARED | libc.MAP_FIXED,
            fd,
            offset,
            addr,
        )
    finally:
        if addr > reserve:
            libc.munmap(reserve, addr - reserve)
        if reserve + span > addr + size:
            libc.munmap(addr + size, reserve + span - (addr + size))


Iommu = Container | Iommufd


def open_iommu(mode: str) -> Iommu:
    """Upstream's iommu_init(): the container or IOAS a mode maps DMA through; several
    devices can share it."""
    return Iommufd() if mode == "iommufd" else Container(mode)


class VfioPciDevice:
    """A vfio-pci device attached to an IOMMU (a mode's container or IOAS, opened here and
    owned, or one shared with other devices); `close` releases everything it opened."""

    def __init__(self, bdf: str, iommu: str | Iommu) -> None:
        self.bdf = bdf
        self._stack = contextlib.ExitStack()
        try:
            if isinstance(iommu, str):
                iommu = open_iommu(iommu)
                self._stack.callback(iommu.close)
            self.iommu = iommu
            self.mode = iommu.mode
            self.fd = self._open_cdev() if isinstance(iommu, Iommufd) else self._open_group()
        except BaseException:
            self._stack.close()
            raise

    def _open_group(self) -> int:
        assert isinstance(self.iommu, Container)
        group = Group(iommu_group(self.bdf))
        self._stack.callback(group.close)
        group.check_viable()
        self.iommu.attach(group)
        fd = group.device_fd(self.bdf)
        self._stack.callback(os.close, fd)
        return fd

    def _open_cdev(self) -> int:
        assert isinstance(self.iommu, Iommufd)
        fd = open_cdev(self.bdf)
        self._stack.callback(os.close, fd)
        bind_and_attach(fd, self.iommu)
        return fd

    def __enter__(self) -> VfioPciDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def info(self) -> U.vfio_device_info:
        return device_info(self.fd)

    def region_caps(self, index: int) -> list[int]:
        """Capability ids along the region's info chain (sparse mmap, type, ...)."""
        buf = info_with_caps(
            self.fd, U.VFIO_DEVICE_GET_REGION_INFO, U.vfio_region_info, index=index
        )
        info = U.vfio_region_info.from_buffer_copy(buf)
        if not info.flags & U.VFIO_REGION_INFO_FLAG_CAPS:
            return []
        return [cap for cap, _ in walk_caps(buf, info.cap_offset)]

    def region(self, index: int) -> Region:
        r = U.new(U.vfio_region_info, index=index)
        libc.ioctl(self.fd, U.VFIO_DEVICE_GET_REGION_INFO, r)
        return Region(index, int(r.flags), int(r.size), int(r.offset), int(r.cap_offset))

    def config_read(self, offset: int, size: int) -> int:
        cfg = self.region(U.VFIO_PCI_CONFIG_REGION_INDEX)
        data = os.pread(self.fd, size, cfg.offset + offset)
        if len(data) != size:
            raise OSError(errno.EIO, f"config read at {offset:#x}: {len(data)} of {size} bytes")
        return int.from_bytes(data, "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        cfg = self.region(U.VFIO_PCI_CONFIG_REGION_INDEX)
        done = os.pwrite(self.fd, value.to_bytes(size, "little"), cfg.offset + offset)
        if done != size:
            raise OSError(errno.EIO, f"config write at {offset:#x}: {done} of {size} bytes")

    def set_bus_master(self, on: bool = True) -> None:
        """edu's DMA silently copies nothing unless Bus Master (command bit 2) is set."""
        cmd = self.config_read(4, 2)
        self.config_write(4, 2, (cmd | 0x4) if on else (cmd & ~0x4))

    def mmap(self, index: int, align: int = 0, misalign: int = 0) -> Mapping:
        m = Mapping(self.fd, self.region(index), align, misalign)
        self._stack.callback(m.close)
        return m

    def largest_bar(self) -> Region:
        """The largest BAR the device lets us mmap, read and write: the one upstream's
        mmio test maps (largest_mapped_bar)."""
        want = U.VFIO_REGION_INFO_FLAG_READ | U.VFIO_REGION_INFO_FLAG_WRITE
        want |= U.VFIO_REGION_INFO_FLAG_MMAP
        bars = [self.region(i) for i in range(U.VFIO_PCI_BAR5_REGION_INDEX + 1)]
        usable = [b for b in bars if b.size and b.flags & want == want]
        if not usable:
            raise OSError(errno.ENODEV, f"{self.bdf} has no BAR to mmap")
        return max(usable, key=lambda b: b.size)

    def reset(self) -> None:
        libc.ioctl(self.fd, U.VFIO_DEVICE_RESET)

    def map_dma(self, vaddr: int, iova: int, size: int, writable: bool = True) -> None:
        self.iommu.map_dma(vaddr, iova, size, writable)

    def unmap_dma(self, iova: int, size: int) -> int:
        return self.iommu.unmap_dma(iova, size)
