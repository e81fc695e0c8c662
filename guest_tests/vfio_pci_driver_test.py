"""Mirrors upstream's vfio_pci_driver_test, with edu as the DMA engine instead of DSA/IOAT."""

from __future__ import annotations

import os

import pytest

from vfiolib import edu as E
from vfiolib import memory
from vfiolib.irq import Interrupts

SIZE = 2 * E.BUF_SIZE
ROUNDS = 10  # as upstream


@pytest.fixture
def mapped(device, iova_allocator):
    """Two mapped buffers, source and destination: [(buffer, IOVA), (buffer, IOVA)]."""
    with (
        memory.dma_mapped(device, iova_allocator, SIZE) as src,
        memory.dma_mapped(device, iova_allocator, SIZE) as dst,
    ):
        yield [src, dst]


def test_init_remove(device, edu_dma_mask, diag):
    """As upstream: the driver removed and initialised again, ten times over; the lab's
    edu driver initialises by checking the ID and liveness registers and turning Bus
    Master on, and removes by turning it off. The device must answer every time."""
    for _ in range(10):
        device.set_bus_master(False)
        edu = E.Edu(device, edu_dma_mask)
        assert edu.ident() == E.IDENT_VALUE
        assert edu.liveness(0x12345678) == 0xEDCBA987
    diag("rounds", 10)


def test_memcpy_success(edu, mapped, diag):
    (src, src_iova), (dst, dst_iova) = mapped
    pattern = os.urandom(SIZE)
    src.write(0, pattern)
    dst.fill(0)
    copied = edu.memcpy(src_iova, dst_iova, SIZE)
    diag("bytes_copied", copied)
    assert dst.read() == pattern


def test_memcpy_to_unmapped_iova(device, edu, mapped, diag):
    (src, src_iova), (dst, dst_iova) = mapped
    src.write(0, b"\xa5" * E.CHUNK)
    dst.fill(0x5A)
    edu.to_device(src_iova, E.CHUNK)
    device.unmap_dma(dst_iova, SIZE)
    edu.from_device(dst_iova, E.CHUNK)
    untouched = dst.read(0, E.CHUNK) == b"\x5a" * E.CHUNK
    diag("destination_untouched", untouched)
    assert untouched, "a DMA to an unmapped IOVA wrote process memory"


def test_memcpy_from_unmapped_iova(device, edu, mapped, diag):
    (src, src_iova), (dst, dst_iova) = mapped
    secret = b"\xc3" * E.CHUNK
    src.write(0, secret)
    device.unmap_dma(src_iova, SIZE)
    edu.to_device(src_iova, E.CHUNK)
    edu.from_device(dst_iova, E.CHUNK)
    leaked = dst.read(0, E.CHUNK) == secret
    diag("source_leaked", leaked)
    assert not leaked, "the device read memory whose IOVA was unmapped"


def test_send_msi(device, edu, diag):
    """edu raises a real MSI: through interrupt remapping in the vIOMMU to our eventfd."""
    with Interrupts(device, "msi") as msi:
        edu.raise_irq()
        fired = msi.wait()
        diag("msi_count", fired)
        diag("irq_status", hex(edu.ack_irq()))
    assert fired == 1


def test_mix_and_match(device, edu, mapped, iova_allocator, diag):
    """Upstream's 10 rounds of a memcpy, a memcpy from an unmapped IOVA and an MSI; the
    lab's memcpys complete by polling and by MSI in turn (the MSI must say DMA)."""
    (src, src_iova), (dst, dst_iova) = mapped
    unmapped_iova = iova_allocator.alloc(E.CHUNK)
    with Interrupts(device, "msi") as msi:
        for round_ in range(ROUNDS):
            src.fill(ord("x"))
            dst.fill(ord("y"))
            edu.irq = msi if round_ % 2 else None
            edu.memcpy(src_iova, dst_iova, E.CHUNK)
            assert dst.read(0, E.CHUNK) == src.read(0, E.CHUNK), f"round {round_}: copy differs"
            edu.memcpy(unmapped_iova, dst_iova, E.CHUNK)  # faults in the vIOMMU
            edu.irq = None
            edu.raise_irq()
            assert msi.wait() == 1, f"round {round_}: no MSI"
            edu.ack_irq()
    diag("rounds", ROUNDS)


# Copies; each is two DMAs of edu's delay (100 ms by default, devices[].dma_delay), so
# upstream's 60 s holds.
STORM = 16


def test_memcpy_storm(device, edu, mapped, diag):
    """As upstream, scaled to edu: many copies back to back (upstream asks a driver for as
    many as it can queue; edu has one 4 KiB buffer and no queue, so the storm is a run of
    copies without pause, each checked), and no MSI, since none was asked for."""
    (src, src_iova), (dst, dst_iova) = mapped
    with Interrupts(device, "msi") as msi:
        for i in range(STORM):
            src.write(0, os.urandom(E.CHUNK))
            edu.memcpy(src_iova, dst_iova, E.CHUNK)
            assert dst.read(0, E.CHUNK) == src.read(0, E.CHUNK), f"copy {i} differs"
        stray = msi.wait(timeout=0.1)
    diag("copies", STORM)
    assert stray == 0, f"{stray} MSI(s) during a storm that asked for none"
