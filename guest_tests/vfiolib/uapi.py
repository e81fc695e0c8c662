"""Structs and ioctl numbers from <linux/vfio.h> and <linux/iommufd.h>, by hand with ctypes.

They follow the newest uAPI: the ioctls are argsz/size-extensible, so older kernels take
the larger structs. tests/unit/test_uapi_layout.py compiles a C program against the
newest Debian uAPI headers and checks every size, offset and number here against it.
"""

from __future__ import annotations

import ctypes as C
from typing import TypeVar

u8, u16, u32, u64 = C.c_uint8, C.c_uint16, C.c_uint32, C.c_uint64

_IOC_NONE = 0


def _IO(kind: str, nr: int) -> int:
    return (_IOC_NONE << 30) | (ord(kind) << 8) | nr


VFIO_TYPE = ";"
VFIO_BASE = 100

VFIO_GET_API_VERSION = _IO(VFIO_TYPE, VFIO_BASE + 0)
VFIO_CHECK_EXTENSION = _IO(VFIO_TYPE, VFIO_BASE + 1)
VFIO_SET_IOMMU = _IO(VFIO_TYPE, VFIO_BASE + 2)
VFIO_GROUP_GET_STATUS = _IO(VFIO_TYPE, VFIO_BASE + 3)
VFIO_GROUP_SET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 4)
VFIO_GROUP_UNSET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 5)
VFIO_GROUP_GET_DEVICE_FD = _IO(VFIO_TYPE, VFIO_BASE + 6)
VFIO_DEVICE_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 7)
VFIO_DEVICE_GET_REGION_INFO = _IO(VFIO_TYPE, VFIO_BASE + 8)
VFIO_DEVICE_GET_IRQ_INFO = _IO(VFIO_TYPE, VFIO_BASE + 9)
VFIO_DEVICE_SET_IRQS = _IO(VFIO_TYPE, VFIO_BASE + 10)
VFIO_DEVICE_RESET = _IO(VFIO_TYPE, VFIO_BASE + 11)
VFIO_DEVICE_FEATURE = _IO(VFIO_TYPE, VFIO_BASE + 17)
VFIO_IOMMU_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12)
VFIO_IOMMU_MAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 13)
VFIO_IOMMU_UNMAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 14)

VFIO_API_VERSION = 0
VFIO_TYPE1_IOMMU = 1
VFIO_TYPE1v2_IOMMU = 3
VFIO_UNMAP_ALL = 9

VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1

VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1

VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_REGION_INFO_FLAG_CAPS = 1 << 3

VFIO_PCI_BAR0_REGION_INDEX = 0
VFIO_PCI_BAR5_REGION_INDEX = 5
VFIO_PCI_CONFIG_REGION_INDEX = 7
VFIO_PCI_NUM_REGIONS = 9

VFIO_DEVICE_FEATURE_GET = 1 << 16
VFIO_DEVICE_FEATURE_SET = 1 << 17
VFIO_DEVICE_FEATURE_PROBE = 1 << 18
VFIO_DEVICE_FEATURE_DMA_BUF = 11

VFIO_PCI_INTX_IRQ_INDEX = 0
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_PCI_MSIX_IRQ_INDEX = 2

VFIO_IRQ_INFO_EVENTFD = 1 << 0
VFIO_IRQ_SET_DATA_NONE = 1 << 0
VFIO_IRQ_SET_DATA_BOOL = 1 << 1
VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2
VFIO_IRQ_SET_ACTION_MASK = 1 << 3
VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4
VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5

VFIO_DMA_MAP_FLAG_READ = 1 << 0
VFIO_DMA_MAP_FLAG_WRITE = 1 << 1
VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1

VFIO_IOMMU_INFO_PGSIZES = 1 << 0
VFIO_IOMMU_INFO_CAPS = 1 << 1
VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1


class vfio_info_cap_header(C.Structure):
    _fields_ = [("id", u16), ("version", u16), ("next", u32)]


class vfio_group_status(C.Structure):
    _fields_ = [("argsz", u32), ("flags", u32)]


class vfio_device_info(C.Structure):
    _fields_ = [
        ("argsz", u32),
        ("flags", u32),
        ("num_regions", u32),
        ("num_irqs", u32),
        ("cap_offset", u32),
        ("pad", u32),
    ]


class vfio_region_info(C.Structure):
    _fields_ = [
        ("argsz", u32),
        ("flags", u32),
        ("index", u32),
        ("cap_offset", u32),
        ("size", u64),
        ("offset", u64),
    ]


class vfio_irq_info(C.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("index", u32), ("count", u32)]


class vfio_irq_set(C.Structure):
    """Header only: `count` __s32 eventfds (or bools) follow it in the ioctl's buffer."""

    _fields_ = [("argsz", u32), ("flags", u32), ("index", u32), ("start", u32), ("count", u32)]


class vfio_device_feature(C.Structure):
    """Header only: the feature's own struct follows it."""

    _fields_ = [("argsz", u32), ("flags", u32)]


class vfio_region_dma_range(C.Structure):
    _fields_ = [("offset", u64), ("length", u64)]


class vfio_device_feature_dma_buf(C.Structure):
    """Header only: `nr_ranges` vfio_region_dma_range follow it."""

    _fields_ = [("region_index", u32), ("open_flags", u32), ("flags", u32), ("nr_ranges", u32)]


class vfio_iommu_type1_info(C.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("iova_pgsizes", u64), ("cap_offset", u32)]


class vfio_iova_range(C.Structure):
    _fields_ = [("start", u64), ("end", u64)]


class vfio_iommu_type1_info_cap_iova_range(C.Structure):
    _fields_ = [("header", vfio_info_cap_header), ("nr_iovas", u32), ("reserved", u32)]


class vfio_iommu_type1_dma_map(C.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("vaddr", u64), ("iova", u64), ("size", u64)]


class vfio_iommu_type1_dma_unmap(C.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("iova", u64), ("size", u64)]


# <linux/vfio.h>: the device cdev and its binding to iommufd (Linux 6.6+).
VFIO_DEVICE_BIND_IOMMUFD = _IO(VFIO_TYPE, VFIO_BASE + 18)
VFIO_DEVICE_ATTACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 19)
VFIO_DEVICE_DETACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 20)


class vfio_device_bind_iommufd(C.Structure):
    _fields_ = [
        ("argsz", u32),
        ("flags", u32),
        ("iommufd", C.c_int32),
        ("out_devid", u32),
        ("token_uuid_ptr", u64),
    ]


class vfio_device_attach_iommufd_pt(C.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("pt_id", u32), ("pasid", u32)]


class vfio_device_detach_iommufd_pt(C.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("pasid", u32)]


# <linux/iommufd.h>
IOMMUFD_TYPE = ";"
IOMMUFD_CMD_BASE = 0x80
IOMMU_DESTROY = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 0)
IOMMU_IOAS_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 1)
IOMMU_IOAS_IOVA_RANGES = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 4)
IOMMU_IOAS_MAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 5)
IOMMU_IOAS_UNMAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 6)
IOMMU_IOAS_MAP_FILE = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 0xF)

IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0
IOMMU_IOAS_MAP_WRITEABLE = 1 << 1
IOMMU_IOAS_MAP_READABLE = 1 << 2


class iommu_destroy(C.Structure):
    _fields_ = [("size", u32), ("id", u32)]


class iommu_ioas_alloc(C.Structure):
    _fields_ = [("size", u32), ("flags", u32), ("out_ioas_id", u32)]


class iommu_iova_range(C.Structure):
    _fields_ = [("start", u64), ("last", u64)]


class iommu_ioas_iova_ranges(C.Structure):
    _fields_ = [
        ("size", u32),
        ("ioas_id", u32),
        ("num_iovas", u32),
        ("__reserved", u32),
        ("allowed_iovas", u64),
        ("out_iova_alignment", u64),
    ]


class iommu_ioas_map(C.Structure):
    _fields_ = [
        ("size", u32),
        ("flags", u32),
        ("ioas_id", u32),
        ("__reserved", u32),
        ("user_va", u64),
        ("length", u64),
        ("iova", u64),
    ]


class iommu_ioas_unmap(C.Structure):
    _fields_ = [("size", u32), ("ioas_id", u32), ("iova", u64), ("length", u64)]


class iommu_ioas_map_file(C.Structure):
    _fields_ = [
        ("size", u32),
        ("flags", u32),
        ("ioas_id", u32),
        ("fd", C.c_int32),
        ("start", u64),
        ("length", u64),
        ("iova", u64),
    ]


_S = TypeVar("_S", bound=C.Structure)


def new(struct_type: type[_S], **fields: int) -> _S:
    """A zeroed struct with its size field set: `argsz` for VFIO, `size` for iommufd."""
    s = struct_type(**fields)
    names = {field[0] for field in struct_type._fields_}
    size_field = "argsz" if "argsz" in names else "size"
    setattr(s, size_field, C.sizeof(struct_type))
    return s


# What the host-side layout test checks: struct name -> ctypes type, and ioctl constants.
STRUCTS = {
    cls.__name__: cls
    for cls in (
        vfio_info_cap_header,
        vfio_group_status,
        vfio_device_info,
        vfio_region_info,
        vfio_irq_info,
        vfio_irq_set,
        vfio_device_feature,
        vfio_region_dma_range,
        vfio_device_feature_dma_buf,
        vfio_iommu_type1_info,
        vfio_iova_range,
        vfio_iommu_type1_info_cap_iova_range,
        vfio_iommu_type1_dma_map,
        vfio_iommu_type1_dma_unmap,
        vfio_device_bind_iommufd,
        vfio_device_attach_iommufd_pt,
        vfio_device_detach_iommufd_pt,
    )
}
# Checked against <linux/iommufd.h>, which older uAPI headers (Debian 12's 6.1) lack.
IOMMUFD_STRUCTS = {
    cls.__name__: cls
    for cls in (
        iommu_destroy,
        iommu_ioas_alloc,
        iommu_iova_range,
        iommu_ioas_iova_ranges,
        iommu_ioas_map,
        iommu_ioas_unmap,
        iommu_ioas_map_file,
    )
}
CONSTANTS = {
    name: value
    for name, value in globals().items()
    if name.startswith("VFIO_") and isinstance(value, int)
}
IOMMUFD_CONSTANTS = {
    name: value
    for name, value in globals().items()
    if name.startswith("IOMMU_") and isinstance(value, int)
}
