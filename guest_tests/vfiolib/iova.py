"""IOVA allocation within the IOMMU's valid ranges and the device's DMA mask."""

from __future__ import annotations


class IovaAllocator:
    """Hands out aligned, non-overlapping IOVA windows, lowest first."""

    def __init__(
        self, ranges: list[tuple[int, int]], dma_mask: int = (1 << 64) - 1, start: int = 1 << 20
    ) -> None:
        # Inclusive [start, end] ranges, clipped to what the device can address.
        self.ranges = sorted(
            (max(s, start), min(e, dma_mask))
            for s, e in ranges
            if min(e, dma_mask) >= max(s, start)
        )
        self.used: list[tuple[int, int]] = []

    def alloc(self, size: int, align: int = 4096) -> int:
        for lo, hi in self.ranges:
            iova = -(-lo // align) * align
            while iova + size - 1 <= hi:
                clash = next(
                    ((s, e) for s, e in self.used if iova <= e and s <= iova + size - 1), None
                )
                if clash is None:
                    self.used.append((iova, iova + size - 1))
                    return iova
                iova = -(-(clash[1] + 1) // align) * align
        raise MemoryError(f"no IOVA window of {size:#x} bytes aligned to {align:#x}")
