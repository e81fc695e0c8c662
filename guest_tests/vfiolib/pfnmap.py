"""The CPU side of a BAR mmap: the page size vfio-pci's fault handler mapped it with.

/proc does not show it (a pfnmap has no pages to count), but vfio_pci_mmap_huge_fault
logs every order it tries, and what came of it, as a dev_dbg. With CONFIG_DYNAMIC_DEBUG
(the `dyndbg` fragment) the lab turns that line on around one fault and reads it back
from /dev/kmsg: the order that returned VM_FAULT_NOPAGE is the size of the mapping.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import time
from collections.abc import Callable, Hashable
from typing import Protocol

from vfiolib import kconfig

CONTROL = "/sys/kernel/debug/dynamic_debug/control"
FUNC = "vfio_pci_mmap_huge_fault"
_LINE = re.compile(FUNC + r"\(,order = (\d+)\) BAR \d+ page offset 0x[0-9a-f]+: (0x[0-9a-f]+)")
VM_FAULT_NOPAGE = 0x100
PAGE = 4096
# The line is dev_dbg_ratelimited: at most 10 lines per 5 s (the kernel's defaults), and a
# fault logs up to 3 (PUD, PMD, then PTE order). Counted here, in this process, so that a
# fault that could be silenced waits for the next window instead of going unrecorded.
RATELIMIT_S, RATELIMIT_BURST, LINES_PER_FAULT = 5.0, 10, 3


class Touchable(Protocol):
    """A fresh mmap of a BAR: read once to fault it in, then unmapped."""

    def read32(self, off: int) -> int: ...

    def close(self) -> None: ...


class _Window:
    start = 0.0
    lines = 0

    @classmethod
    def make_room(cls) -> None:
        now = time.monotonic()
        if now - cls.start > RATELIMIT_S:
            cls.start, cls.lines = now, 0
        elif cls.lines + LINES_PER_FAULT > RATELIMIT_BURST:
            cls.wait_for_next(cls.start + RATELIMIT_S + 0.2 - now)

    @classmethod
    def wait_for_next(cls, seconds: float) -> None:
        """Sleep until the kernel's window is sure to be over, then count a new one."""
        time.sleep(seconds)
        cls.start, cls.lines = time.monotonic(), 0


# What each layout was measured to fault with, for this process's lifetime. The handler's
# choice depends only on the layout (the BAR, which is fixed while the guest runs, and the
# mmap's size, offset and alignment), so measuring it again would add nothing but waits for
# the ratelimit: only 3 faults fit in its window, and a cell asks about 15 times.
_measured: dict[Hashable, int] = {}


def fault_size(fresh: Callable[[], Touchable], layout: Hashable) -> int | str:
    """The page size the handler maps a fresh mmap with, or why it is not known.

    `fresh()` makes a new mapping each call: only a mapping nothing has touched yet is
    sure to fault. `layout` names what decides the size (device, BAR, mmap alignment):
    a layout already measured in this process is not faulted again. The kernel's
    ratelimit window can only be estimated from here, so a fault whose lines it cut short
    is tried once more on another fresh mapping after a whole window has passed, when the
    kernel is sure to log all of them.
    """
    if layout in _measured:
        return _measured[layout]
    if not os.path.exists(CONTROL):
        if kconfig.promising("CONFIG_DYNAMIC_DEBUG"):
            raise AssertionError(f"CONFIG_DYNAMIC_DEBUG=y promises {CONTROL}, but it is absent")
        return "unknown (no CONFIG_DYNAMIC_DEBUG)"
    if not _has_debug_line():
        return f"unknown (this kernel's vfio-pci has no {FUNC} debug line)"
    _Window.make_room()
    size = size_from(_fault_fresh(fresh))
    if size is None:
        _Window.wait_for_next(RATELIMIT_S + 0.2)
        size = size_from(_fault_fresh(fresh))
    if size is None:
        return f"unknown ({FUNC} logged no order that mapped a fresh mmap)"
    _measured[layout] = size
    return size


@functools.cache
def _has_debug_line() -> bool:
    # Lines read "file:line [module]function flags format".
    with open(CONTROL) as f:
        return any(f"]{FUNC} " in line for line in f)


def _fault_fresh(fresh: Callable[[], Touchable]) -> list[str]:
    mapping = fresh()
    try:
        lines = _logged(lambda: mapping.read32(0))
    finally:
        mapping.close()
    _Window.lines += len(lines)
    return lines


def _logged(touch: Callable[[], object]) -> list[str]:
    """The handler's lines while `touch()` ran, its dynamic debug on for just that long."""
    kmsg = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.lseek(kmsg, 0, os.SEEK_END)
        _control("+p")
        try:
            touch()
        finally:
            _control("-p")
        return [line for line in _records(kmsg) if FUNC in line]
    finally:
        os.close(kmsg)


def size_from(lines: list[str]) -> int | None:
    """The size of the order the handler mapped, from its debug lines."""
    for line in lines:
        m = _LINE.search(line)
        if m and int(m.group(2), 16) & VM_FAULT_NOPAGE:
            return PAGE << int(m.group(1))
    return None


def _control(flags: str) -> None:
    with open(CONTROL, "w") as f:
        f.write(f"func {FUNC} {flags}\n")


def _records(kmsg: int) -> list[str]:
    """The kernel log records written since the fd was moved to the end."""
    lines: list[str] = []
    while True:
        try:
            record = os.read(kmsg, 8192)
        except OSError as e:
            if e.errno == errno.EAGAIN:
                return lines
            if e.errno == errno.EPIPE:  # records overwritten before they were read
                continue
            raise
        lines.append(record.decode(errors="replace"))
