"""Markers in the guest kernel's log (`vfio-lab: test-start NAME` ...): the host reads
them back (lab.vm.console.MARKER) to put each kernel line on the test that was running.
Written by the pytest plugin (tap_report) and by the C suites' runner (lab_kselftest).
"""

from __future__ import annotations

import os

KMSG = os.environ.get("VFIO_LAB_KMSG", "/dev/kmsg")  # the unit tests point it at a file


def mark(text: str) -> None:
    # os.open, not open(..., "a"): Python seeks to the end of a file opened to append,
    # and /dev/kmsg refuses a seek on a write-only descriptor (EBADF).
    try:
        fd = os.open(KMSG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:
        return  # not root, or no /dev/kmsg: markers are a help, not a requirement
    try:
        os.write(fd, f"vfio-lab: {text}\n".encode())
    except OSError:
        pass
    finally:
        os.close(fd)
