"""Where the lab's own data lives: guest_tests/ (the payload and its runtime: vfiolib, the
TAP plugin, the C suites' runner), images/ (recipes: kernel config fragments, root
filesystem, initramfs, QEMU and selftest patches) and scenarios/ (the built-in scenarios,
which the CLI also accepts by name: `vfio-lab run iommufd-compat`).

In a checkout they sit at the top level, beside lab/, and are read in place. A wheel
carries them inside the package, as lab/data/ (pyproject.toml's force-include).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[2]


def _root() -> Path:
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "guest_tests").is_dir():
        return _CHECKOUT
    # An installed wheel: the package is a directory on disk.
    return Path(str(files("lab").joinpath("data")))


DATA = _root()
GUEST_TESTS = DATA / "guest_tests"
IMAGES = DATA / "images"
SCENARIOS = DATA / "scenarios"
