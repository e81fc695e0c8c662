"""Native iommufd: an IOAS on /dev/iommu, and a device cdev bound and attached to it."""

from __future__ import annotations

import ctypes as C
import errno
import glob
import os
from dataclasses import dataclass

from vfiolib import libc
from vfiolib import uapi as U

PAGE_4K = 4096
U64_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class IommuInfo:
    """What a container or an IOAS says about its IOVA space, with one meaning for both."""

    pgsizes: int  # bitmap of the IOVA page sizes it maps with (bit n: 2**n bytes)
    ranges: list[tuple[int, int]]  # valid IOVAs, inclusive


class Iommufd:
    """The DMA-mapping side of the `iommufd` mode, with the same calls as a type1 Container."""

    mode = "iommufd"

    def __init__(self) -> None:
        self.fd = os.open("/dev/iommu", os.O_RDWR | os.O_CLOEXEC)
        try:
            alloc = U.new(U.iommu_ioas_alloc)
            libc.ioctl(self.fd, U.IOMMU_IOAS_ALLOC, alloc)
            self.ioas_id = int(alloc.out_ioas_id)
        except BaseException:
            os.close(self.fd)
            raise

    def map_dma(self, vaddr: int, iova: int, size: int, writable: bool = True) -> None:
        flags = U.IOMMU_IOAS_MAP_READABLE | (U.IOMMU_IOAS_MAP_WRITEABLE if writable else 0)
        args = U.new(
            U.iommu_ioas_map,
            flags=flags | U.IOMMU_IOAS_MAP_FIXED_IOVA,
            ioas_id=self.ioas_id,
            user_va=vaddr,
            length=size,
            iova=iova,
        )
        libc.ioctl(self.fd, U.IOMMU_IOAS_MAP, args)

    def map_file(self, fd: int, start: int, length: int, iova: int) -> None:
        """Map `length` bytes of a file (a memfd, or a VFIO dma-buf on kernels that accept
        one) from `start`, at `iova`, readable and writable."""
        flags = U.IOMMU_IOAS_MAP_READABLE | U.IOMMU_IOAS_MAP_WRITEABLE | U.IOMMU_IOAS_MAP_FIXED_IOVA
        args = U.new(
            U.iommu_ioas_map_file,
            flags=flags,
            ioas_id=self.ioas_id,
            fd=fd,
            start=start,
            length=length,
            iova=iova,
        )
        libc.ioctl(self.fd, U.IOMMU_IOAS_MAP_FILE, args)

    def unmap_dma(self, iova: int, size: int) -> int:
        args = U.new(U.iommu_ioas_unmap, ioas_id=self.ioas_id, iova=iova, length=size)
        libc.ioctl(self.fd, U.IOMMU_IOAS_UNMAP, args)
        return int(args.length)

    def unmap_all(self) -> int:
        """iommufd's way of saying all: IOVA 0, length U64_MAX."""
        return self.unmap_dma(0, U64_MAX)

    def info(self) -> IommuInfo:
        """The IOAS's IOVA ranges, and its page sizes as the bitmap type1 reports: every
        power of two from the IOVA alignment iommufd requires up."""
        probe = U.new(U.iommu_ioas_iova_ranges, ioas_id=self.ioas_id)
        try:
            libc.ioctl(self.fd, U.IOMMU_IOAS_IOVA_RANGES, probe)
        except OSError as e:
            if e.errno != errno.EMSGSIZE:  # num_iovas now says how many there are
                raise
        count = int(probe.num_iovas)
        ranges = (U.iommu_iova_range * max(count, 1))()
        query = U.new(
            U.iommu_ioas_iova_ranges,
            ioas_id=self.ioas_id,
            num_iovas=count,
            allowed_iovas=C.addressof(ranges),
        )
        libc.ioctl(self.fd, U.IOMMU_IOAS_IOVA_RANGES, query)
        align = int(query.out_iova_alignment) or PAGE_4K
        return IommuInfo(
            U64_MAX & ~(align - 1), [(int(r.start), int(r.last)) for r in ranges[:count]]
        )

    def close(self) -> None:
        os.close(self.fd)


def open_cdev(bdf: str) -> int:
    """The device's /dev/vfio/devices/vfioN, found through sysfs."""
    (node,) = glob.glob(f"/sys/bus/pci/devices/{bdf}/vfio-dev/vfio*")
    return os.open(f"/dev/vfio/devices/{os.path.basename(node)}", os.O_RDWR | os.O_CLOEXEC)


def bind_and_attach(device_fd: int, iommufd: Iommufd) -> int:
    """VFIO_DEVICE_BIND_IOMMUFD then VFIO_DEVICE_ATTACH_IOMMUFD_PT to the IOAS; returns the dev id."""
    bind = U.new(U.vfio_device_bind_iommufd, iommufd=iommufd.fd)
    libc.ioctl(device_fd, U.VFIO_DEVICE_BIND_IOMMUFD, bind)
    attach = U.new(U.vfio_device_attach_iommufd_pt, pt_id=iommufd.ioas_id)
    libc.ioctl(device_fd, U.VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach)
    return int(bind.out_devid)
