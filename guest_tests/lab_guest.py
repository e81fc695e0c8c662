"""Guest-side helper the host calls over SSH: bind devices to vfio-pci, and get a guest
ready to be snapshotted and to resume from a snapshot."""

from __future__ import annotations

import fcntl
import os
import struct
import sys
import time

from vfiolib import pci


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def bind(vendor: int, device: int) -> list[str]:
    """Bind every vendor:device function to vfio-pci with driver_override; returns the BDFs."""
    if not os.path.isdir("/sys/bus/pci/drivers/vfio-pci"):  # built in: nothing to load
        # Imported here: snapshot-resume runs first on a restored guest, where TCG translates
        # every code path afresh, and each import is time before the guest is ready.
        import subprocess

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


# QEMU migrates no state for a device without a vmstate description (edu is one): a
# restored guest finds its config space at power-on values, BARs unassigned and decoding
# off. The guest keeps each endpoint's header as it was at the save, and writes back what
# QEMU lost: the BARs, then the command register that turns decoding on.
SAVED_CONFIG = "/run/vfio-lab-snapshot"
HEADER = 0x40
BARS = range(0x10, 0x28, 4)
COMMAND = 0x04
RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)


def _endpoints() -> list[str]:
    """Every PCI function with a type 0 header (bridges are QEMU devices that migrate)."""
    found = []
    for bdf in sorted(os.listdir(pci.SYSFS)):
        with open(f"{pci.SYSFS}/{bdf}/config", "rb") as f:
            header = f.read(HEADER)
        if header[0x0E] & 0x7F == 0:
            found.append(bdf)
    return found


def snapshot_save() -> None:
    os.makedirs(SAVED_CONFIG, exist_ok=True)
    for bdf in _endpoints():
        with open(f"{pci.SYSFS}/{bdf}/config", "rb") as f:
            header = f.read(HEADER)
        with open(f"{SAVED_CONFIG}/{bdf}", "wb") as out:
            out.write(header)
    os.sync()


def _rewrite_header(bdf: str) -> bool:
    """Write back a header QEMU lost; False when it came back as it was saved."""
    with open(f"{SAVED_CONFIG}/{bdf}", "rb") as f:
        saved = f.read()
    with open(f"{pci.SYSFS}/{bdf}/config", "r+b", buffering=0) as cfg:
        if cfg.read(HEADER) == saved:
            return False
        for offset in (*BARS, COMMAND):
            size = 2 if offset == COMMAND else 4
            cfg.seek(offset)
            cfg.write(saved[offset : offset + size])
    return True


def snapshot_resume(epoch_ns: int, seed: bytes) -> list[str]:
    """After a restore: the host's time, fresh entropy (the saved guest's pool is the same in
    every restore), and the config space of devices QEMU does not migrate."""
    time.clock_settime_ns(time.CLOCK_REALTIME, epoch_ns)
    with open("/dev/urandom", "wb") as pool:
        info = struct.pack("ii", len(seed) * 8, len(seed)) + seed
        fcntl.ioctl(pool, RNDADDENTROPY, info)
        fcntl.ioctl(pool, RNDRESEEDCRNG)
    return [bdf for bdf in sorted(os.listdir(SAVED_CONFIG)) if _rewrite_header(bdf)]


def main(argv: list[str]) -> int:
    if argv == ["snapshot-save"]:
        snapshot_save()
        return 0
    if len(argv) == 3 and argv[0] == "snapshot-resume":
        print(" ".join(snapshot_resume(int(argv[1]), bytes.fromhex(argv[2]))))
        return 0
    if len(argv) == 2 and argv[0] == "bind":
        vendor, device = (int(x, 16) for x in argv[1].split(":"))
        bdfs = bind(vendor, device)
        if not bdfs:
            print(f"no PCI device {argv[1]} found", file=sys.stderr)
            return 1
        print(" ".join(bdfs))
        return 0
    print(
        "usage: lab_guest.py bind VENDOR:DEVICE | snapshot-save | snapshot-resume EPOCH_NS SEED_HEX",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
