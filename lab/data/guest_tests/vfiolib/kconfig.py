"""The running kernel's configuration, as the host put it in the guest (VFIO_LAB_KCONFIG)."""

from __future__ import annotations

import functools
import os


@functools.cache
def _config() -> dict[str, str] | None:
    path = os.environ.get("VFIO_LAB_KCONFIG", "")
    if not path or not os.path.exists(path):
        return None
    values = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("CONFIG_") and "=" in line:
                key, _, value = line.partition("=")
                values[key] = value
            elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
                values[line[2:].split()[0]] = "n"
    return values


def value(option: str) -> str | None:
    """'y', 'm', 'n', a string, or None when the option is unknown or no config is present."""
    cfg = _config()
    return None if cfg is None else cfg.get(option, "n")


def explain(*options: str, what: str) -> str:
    """A skip reason naming the first unset option (when the config is known) and the missing file."""
    for option in options:
        if value(option) in ("n", None) and _config() is not None:
            return f"{option} not set (no {what})"
    return f"{what} is absent" + ("" if _config() is not None else " (kernel config unknown)")
