"""Device interrupts through VFIO: eventfds per vector via VFIO_DEVICE_SET_IRQS."""

from __future__ import annotations

import ctypes as C
import os
import select

from vfiolib import libc
from vfiolib import uapi as U
from vfiolib.vfio import VfioPciDevice

INDEX = {
    "intx": U.VFIO_PCI_INTX_IRQ_INDEX,
    "msi": U.VFIO_PCI_MSI_IRQ_INDEX,
    "msix": U.VFIO_PCI_MSIX_IRQ_INDEX,
}


def irq_count(device: VfioPciDevice, kind: str) -> int:
    info = U.new(U.vfio_irq_info, index=INDEX[kind])
    libc.ioctl(device.fd, U.VFIO_DEVICE_GET_IRQ_INFO, info)
    return int(info.count)


def set_irqs(device: VfioPciDevice, kind: str, flags: int, start: int, data: list[int]) -> None:
    """VFIO_DEVICE_SET_IRQS with `data` as __s32 values after the header (eventfds)."""
    head = C.sizeof(U.vfio_irq_set)
    buf = (C.c_uint8 * (head + 4 * len(data)))()
    hdr = U.vfio_irq_set.from_buffer(buf)
    hdr.argsz, hdr.flags, hdr.index, hdr.start, hdr.count = (
        len(buf),
        flags,
        INDEX[kind],
        start,
        len(data),
    )
    for i, value in enumerate(data):
        C.c_int32.from_buffer(buf, head + 4 * i).value = value
    libc.ioctl(device.fd, U.VFIO_DEVICE_SET_IRQS, C.addressof(buf))


class Interrupts:
    """`count` vectors of one kind, each signalling its own eventfd; `close` disables them."""

    def __init__(self, device: VfioPciDevice, kind: str, count: int = 1) -> None:
        self.device = device
        self.kind = kind
        self.fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(count)]
        try:
            set_irqs(
                device,
                kind,
                U.VFIO_IRQ_SET_DATA_EVENTFD | U.VFIO_IRQ_SET_ACTION_TRIGGER,
                0,
                self.fds,
            )
        except BaseException:
            self._close_fds()
            raise

    def trigger(self, vector: int = 0) -> None:
        """Fire a vector from software (DATA_NONE | ACTION_TRIGGER), as upstream's irq tests do."""
        set_irqs(
            self.device,
            self.kind,
            U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_ACTION_TRIGGER,
            vector,
            [0],
        )

    def wait(self, vector: int = 0, timeout: float = 5.0) -> int:
        """How many times the vector fired since the last wait (0 after `timeout`)."""
        ready, _, _ = select.select([self.fds[vector]], [], [], timeout)
        return os.eventfd_read(self.fds[vector]) if ready else 0

    def close(self) -> None:
        try:
            set_irqs(
                self.device,
                self.kind,
                U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_ACTION_TRIGGER,
                0,
                [],
            )
        finally:
            self._close_fds()

    def _close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def __enter__(self) -> Interrupts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
