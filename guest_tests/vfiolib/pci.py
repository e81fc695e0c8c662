"""PCI functions as sysfs shows them."""

from __future__ import annotations

import os

SYSFS = "/sys/bus/pci/devices"


def _read_hex(path: str) -> int:
    with open(path) as f:
        return int(f.read(), 16)


def functions(vendor: int, device: int) -> list[str]:
    """BDFs of every function with this vendor:device ID, in bus order."""
    return [
        bdf
        for bdf in sorted(os.listdir(SYSFS))
        if (_read_hex(f"{SYSFS}/{bdf}/vendor"), _read_hex(f"{SYSFS}/{bdf}/device"))
        == (vendor, device)
    ]


def driver(bdf: str) -> str:
    """The bound driver's name, or '' for none."""
    link = f"{SYSFS}/{bdf}/driver"
    return os.path.basename(os.readlink(link)) if os.path.exists(link) else ""
