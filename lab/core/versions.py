"""Versions of the emulator binaries the lab runs, asked once per binary."""

from __future__ import annotations

import functools
import re
import subprocess


@functools.cache
def version_text(binary: str) -> str:
    """The first line of `BINARY --version`, or "" when the binary cannot be run."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return ""
    return out.splitlines()[0] if out else ""


def qemu_version(binary: str) -> str:
    """'7.2.22' and Debian's package suffix, e.g. '7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)'."""
    m = re.search(r"version (\S+)(.*)", version_text(binary))
    return (m.group(1) + m.group(2)).strip() if m else "unknown"


def version_tuple(binary: str) -> tuple[int, int]:
    m = re.search(r"version (\d+)\.(\d+)", version_text(binary))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)
