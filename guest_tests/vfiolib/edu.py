"""A driver for QEMU's edu device, used as upstream uses DSA/IOAT: a DMA engine for tests."""

from __future__ import annotations

import time

from vfiolib.irq import Interrupts
from vfiolib.vfio import Mapping, Region, VfioPciDevice

EDU_ID = (0x1234, 0x11E8)
IDENT = 0x00
IDENT_VALUE = 0x010000ED
LIVENESS = 0x04
IRQ_STATUS = 0x24
IRQ_DMA = 0x100  # the status bit edu sets when a DMA with DMA_IRQ completes
IRQ_RAISE = 0x60
IRQ_ACK = 0x64
DMA_SRC = 0x80
DMA_DST = 0x88
DMA_COUNT = 0x90
DMA_CMD = 0x98
DMA_RUN = 0x1
DMA_TO_RAM = 0x2  # direction bit: device buffer -> RAM
DMA_IRQ = 0x4
BUF_ADDR = 0x40000  # the device-side 4 KiB DMA buffer, in edu's own address space
BUF_SIZE = 4096
# QEMU 7.2's edu_check_range() rejects a transfer that ends exactly at the buffer's end
# (off by one) and aborts QEMU with hw_error, so transfers stay strictly inside it.
CHUNK = BUF_SIZE // 2
# How long a transfer takes unless the scenario says otherwise (devices[].dma_delay): edu's
# own 100 ms of virtual time.
DEFAULT_DMA_DELAY = 0.1
# How long past its delay a transfer may take before it counts as lost: a busy host delays
# QEMU's timers.
DMA_GRACE = 5.0
# A transfer is not done before its delay: the driver sleeps that long first, then polls
# every twentieth of the delay, from POLL_FIRST to POLL_MAX. A short delay costs little
# more than itself; edu's own 100 ms is polled every 5 ms, as before the delay was
# settable. (Polling from 20 us whatever the delay coincided with a stock 6.1 guest under
# Debian's QEMU losing a vCPU's timer wakeups: many short sleeps reprogram the LAPIC
# timer for every DMA.)
POLL_FIRST = 20e-6
POLL_MAX = 5e-3


class EduError(Exception):
    pass


def ram_bar(device: VfioPciDevice, promised: tuple[int, int]) -> Region:
    """The RAM BAR the scenario promised (size, index), checked to be there as promised."""
    size, index = promised
    region = device.region(index)
    if region.size != size:
        raise EduError(f"BAR{index} is {region.size:#x} bytes; the scenario promised {size:#x}")
    return region


class Edu:
    def __init__(
        self,
        device: VfioPciDevice,
        dma_mask: int = (1 << 64) - 1,
        dma_delay: float = DEFAULT_DMA_DELAY,
    ) -> None:
        self.device = device
        self.dma_mask = dma_mask
        self.dma_delay = dma_delay  # seconds each transfer takes (edu's dma-delay-ns)
        self.bar: Mapping = device.mmap(0)
        self.irq: Interrupts | None = None  # set: transfers complete by MSI instead of polling
        device.set_bus_master(True)

    def ident(self) -> int:
        return self.bar.read32(IDENT)

    def liveness(self, value: int) -> int:
        """edu returns the bitwise inverse of what was last written."""
        self.bar.write32(LIVENESS, value)
        return self.bar.read32(LIVENESS)

    def _check(self, iova: int, length: int, buf_off: int) -> None:
        if iova + length - 1 > self.dma_mask:
            raise EduError(
                f"IOVA {iova:#x}+{length:#x} is outside edu's DMA mask {self.dma_mask:#x}"
            )
        if buf_off < 0 or buf_off + length >= BUF_SIZE or length <= 0:
            # edu aborts QEMU on an out-of-buffer transfer, so refuse before starting one.
            raise EduError(
                f"[{buf_off:#x}, +{length:#x}) does not fit strictly inside edu's buffer"
            )

    def raise_irq(self, status: int = 1) -> None:
        """edu sets `status` bits and raises its interrupt (an MSI when MSI is enabled)."""
        self.bar.write32(IRQ_RAISE, status)

    def ack_irq(self) -> int:
        status = self.bar.read32(IRQ_STATUS)
        self.bar.write32(IRQ_ACK, status)
        return status

    def _start(self, src: int, dst: int, length: int, cmd: int, timeout: float | None) -> None:
        """Start a transfer and wait for it: by polling, or by its MSI when `irq` is set;
        `timeout` defaults to the device's delay and a grace."""
        if timeout is None:
            timeout = self.dma_delay + DMA_GRACE
        self.bar.write64(DMA_SRC, src)
        self.bar.write64(DMA_DST, dst)
        self.bar.write64(DMA_COUNT, length)
        self.bar.write64(DMA_CMD, cmd | DMA_RUN | (DMA_IRQ if self.irq is not None else 0))
        if self.irq is not None:
            if not self.irq.wait(timeout=timeout):
                raise EduError(f"no completion MSI within {timeout} s")
            status = self.ack_irq()
            if not status & IRQ_DMA:
                raise EduError(f"an MSI whose status {status:#x} does not say DMA ({IRQ_DMA:#x})")
            return
        deadline = time.monotonic() + timeout
        time.sleep(min(self.dma_delay, timeout))
        pause = min(max(self.dma_delay / 20, POLL_FIRST), POLL_MAX)
        while self.bar.read64(DMA_CMD) & DMA_RUN:
            if time.monotonic() > deadline:
                raise EduError(f"DMA did not complete within {timeout} s")
            time.sleep(pause)

    def to_device(
        self, iova: int, length: int, buf_off: int = 0, timeout: float | None = None
    ) -> None:
        """RAM (at `iova`, through the IOMMU) -> edu's buffer."""
        self._check(iova, length, buf_off)
        self._start(iova, BUF_ADDR + buf_off, length, 0, timeout)

    def from_device(
        self, iova: int, length: int, buf_off: int = 0, timeout: float | None = None
    ) -> None:
        """edu's buffer -> RAM (at `iova`, through the IOMMU)."""
        self._check(iova, length, buf_off)
        self._start(BUF_ADDR + buf_off, iova, length, DMA_TO_RAM, timeout)

    def memcpy(self, src_iova: int, dst_iova: int, size: int) -> int:
        """Copy through the device in chunks of its buffer; returns the bytes copied."""
        done = 0
        while done < size:
            n = min(CHUNK, size - done)
            self.to_device(src_iova + done, n)
            self.from_device(dst_iova + done, n)
            done += n
        return done
