"""Markers in the guest kernel's log (`vfio-lab: test-start NAME` ...): the host reads
them back (lab.vm.console.MARKER) to put each kernel line on the test that was running.
Written by the pytest plugin (tap_report) and by the C suites' runner (lab_kselftest).
"""

from __future__ import annotations

import os


def mark(text: str) -> None:
    # Read at each call: the host's unit tests point VFIO_LAB_KMSG at a file of their own.
    path = os.environ.get("VFIO_LAB_KMSG", "/dev/kmsg")
    # os.open, not open(..., "a"): Python seeks to the end of a file opened to append,
    # and /dev/kmsg refuses a seek on a write-only descriptor (EBADF). No O_CREAT: a
    # missing /dev/kmsg is no place to leave a file of markers.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError:
        return  # not root, or no /dev/kmsg: markers are a help, not a requirement
    try:
        os.write(fd, f"vfio-lab: {text}\n".encode())
    except OSError:
        pass
    finally:
        os.close(fd)
