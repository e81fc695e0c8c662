"""Where the lab's own data lives: inside the package, so that a wheel carries it.

guest_tests/ is the payload and its runtime (vfiolib, the TAP plugin), images/ the
recipes (kernel config fragments, root filesystem, initramfs), scenarios/ the
built-in scenarios, which the CLI also accepts by name (`vfio-lab run iommufd-compat`).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# An installed wheel or a checkout: either way the package is a directory on disk.
DATA = Path(str(files("lab").joinpath("data")))
GUEST_TESTS = DATA / "guest_tests"
IMAGES = DATA / "images"
SCENARIOS = DATA / "scenarios"
