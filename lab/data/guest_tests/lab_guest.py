"""Guest-side helper the host calls over SSH: bind devices to vfio-pci, report state."""

from __future__ import annotations

import os
import subprocess
import sys

from vfiolib import pci


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def bind(vendor: int, device: int) -> list[str]:
    """Bind every vendor:device function to vfio-pci with driver_override; returns the BDFs."""
    if not os.path.isdir("/sys/bus/pci/drivers/vfio-pci"):  # built in: nothing to load
        subprocess.run(["modprobe", "vfio-pci"], check=True)
    bound = pci.functions(vendor, device)
    for bdf in bound:
        dev = f"{pci.SYSFS}/{bdf}"
        _write(f"{dev}/driver_override", "vfio-pci")
        if pci.driver(bdf):
            _write(f"{dev}/driver/unbind", bdf)
        _write("/sys/bus/pci/drivers_probe", bdf)
        if pci.driver(bdf) != "vfio-pci":
            raise SystemExit(f"{bdf}: bound to {pci.driver(bdf) or 'no driver'}, not vfio-pci")
    return bound


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "bind":
        vendor, device = (int(x, 16) for x in argv[1].split(":"))
        bdfs = bind(vendor, device)
        if not bdfs:
            print(f"no PCI device {argv[1]} found", file=sys.stderr)
            return 1
        print(" ".join(bdfs))
        return 0
    print("usage: lab_guest.py bind VENDOR:DEVICE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
