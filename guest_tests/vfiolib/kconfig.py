"""The running kernel's configuration, as the host put it in the guest (VFIO_LAB_KCONFIG),
and the rule built on it: a feature may be skipped only when the configuration does not
promise it. A feature the configuration promises but the kernel lacks is a failure
naming the option.
"""

from __future__ import annotations

import functools
import os

import pytest

# The lab always sets VFIO_LAB_KCONFIG: inside a lab run the config is never "unknown".
ENV = "VFIO_LAB_KCONFIG"


@functools.cache
def _config() -> dict[str, str] | None:
    path = os.environ.get(ENV, "")
    if not path:
        return None
    if not os.path.exists(path):
        raise FileNotFoundError(f"{ENV}={path}: the kernel config the lab copied in is missing")
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
    """'y', 'm', 'n', a string, or None when no config is known (a shell outside a run)."""
    cfg = _config()
    return None if cfg is None else cfg.get(option, "n")


def promising(*options: str) -> str | None:
    """The first of `options` the config sets (y or m), None if it sets none of them."""
    return next((o for o in options if value(o) in ("y", "m")), None)


def require(present: bool, *options: str, what: str) -> None:
    """Skip when the config promises none of `options` (the feature is not built in this
    kernel); fail naming the option when one promises it and the feature is absent
    anyway; do nothing when it is present."""
    if present:
        return
    promised = promising(*options)
    if promised is not None:
        pytest.fail(f"{promised}={value(promised)} promises {what}, but it is absent")
    if _config() is None:
        pytest.skip(f"{what} is absent (kernel config unknown: {ENV} not set)")
    pytest.skip(f"{' and '.join(f'{o} not set' for o in options)} (no {what})")
