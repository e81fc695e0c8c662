"""What a scenario can say about kernels: a spec (`SOURCE[:ARG]`) from the registry of
kernel sources, and the config a cell asks of a source-built kernel.

The registry here knows each source's syntax and naming; `lab.artifacts.kernels` builds
what a spec names, with one builder per source listed here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from lab.core.data import IMAGES
from lab.core.errors import UsageError
from lab.core.registry import Registry

FRAGMENTS_DIR = IMAGES / "kernel"
BASE_FRAGMENT = "base"
_NAME = re.compile(r"^[A-Z0-9_]+$")


@dataclass(frozen=True)
class KernelSpec:
    source: str
    arg: str
    patches: tuple[Path, ...] = ()  # applied in order to the source tree
    name: str = ""  # the kernel's part of cell names, when the scenario gives one

    @property
    def label(self) -> str:
        """The source spec as written (patches are recorded beside it)."""
        return f"{self.source}:{self.arg}" if self.arg else self.source

    @property
    def cell_label(self) -> str:
        """The kernel's part of a cell name: a patched kernel is named after its first patch."""
        if self.name:
            return self.name
        label = KERNEL_SOURCES[self.source].cell_label(self.arg)
        return f"{label}+{self.patches[0].stem}" if self.patches else label


@dataclass(frozen=True)
class CellConfig:
    """What a cell asks of the kernel config: named fragments, then single options."""

    fragments: tuple[str, ...] = ()
    overrides: tuple[tuple[str, str], ...] = ()


NO_CONFIG = CellConfig()


class SpecError(UsageError):
    """A kernel spec that names nothing its source can provide."""


class KernelSourceKind:
    name: ClassVar[str]
    doc: ClassVar[str]
    configurable: ClassVar[bool] = False  # whether fragments and config options apply
    # Why patches cannot apply to this source; empty when they can.
    unpatchable: ClassVar[str] = "it is a prebuilt kernel: use debian:X.Y"

    def check_arg(self, arg: str) -> None:
        """Raise SpecError when `arg` is not valid for this source."""

    def cell_label(self, arg: str) -> str:
        """The kernel's part of a cell name."""
        return f"{self.name}:{arg}" if arg else self.name


_DEB_PKG = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
_DEB_VERSION = re.compile(r"^[0-9A-Za-z.+~:-]+$")
DEBIAN_SERIES = re.compile(r"^(\d+\.\d+)(?:=(\S+))?$")


class DebianStockKind(KernelSourceKind):
    name = "debian-stock"
    doc = (
        "the stock Debian kernel (ARG: image package[=version], default linux-image-ARCH "
        "of machine.arch: amd64 or arm64, the latter from the lab's private apt setup)"
    )

    def check_arg(self, arg: str) -> None:
        package, eq, version = arg.partition("=")
        if (package and not _DEB_PKG.match(package)) or (eq and not _DEB_VERSION.match(version)):
            raise SpecError(f"{arg!r} is not a Debian package name, optionally with =version")

    def cell_label(self, arg: str) -> str:
        return self.name


class DebianSourceKind(KernelSourceKind):
    name = "debian"
    doc = "Debian's linux-source-X.Y built with the lab's config (ARG: X.Y[=package version])"
    configurable = True
    unpatchable = ""

    def check_arg(self, arg: str) -> None:
        if not DEBIAN_SERIES.match(arg):
            raise SpecError(f"debian:{arg}: expected debian:X.Y such as debian:7.2")

    def cell_label(self, arg: str) -> str:
        return arg.partition("=")[0]


class LocalTreeKind(KernelSourceKind):
    name = "local"
    doc = "a local kernel git checkout (ARG: its path; relative to the scenario file)"
    configurable = True
    unpatchable = "it is your own checkout: apply them there (git am)"

    def check_arg(self, arg: str) -> None:
        path = Path(arg)
        if not (path / "Makefile").is_file() or not (path / "Kconfig").is_file():
            raise SpecError(f"local:{arg}: no kernel tree there (no Makefile and Kconfig)")

    def cell_label(self, arg: str) -> str:
        return f"local-{Path(arg).name}"


KERNEL_SOURCES: Registry[KernelSourceKind] = Registry(
    "kernel source",
    {k.name: k() for k in (DebianStockKind, DebianSourceKind, LocalTreeKind)},
)


def parse_kernel_spec(text: str, patches: tuple[Path, ...] = (), name: str = "") -> KernelSpec:
    source, _, arg = text.partition(":")
    kind = KERNEL_SOURCES[source]
    kind.check_arg(arg)
    if patches and kind.unpatchable:
        raise SpecError(f"{text} takes no patches: {kind.unpatchable}")
    return KernelSpec(source=source, arg=arg, patches=patches, name=name)


def option_name(name: str) -> str:
    """'IOMMUFD_VFIO_CONTAINER' or 'CONFIG_IOMMUFD_VFIO_CONTAINER' -> the CONFIG_ form."""
    bare = name.removeprefix("CONFIG_")
    if not _NAME.match(bare):
        raise ValueError(f"{name!r} is not a kernel config option name")
    return f"CONFIG_{bare}"


def available_fragments() -> list[str]:
    return sorted(p.stem for p in FRAGMENTS_DIR.glob("*.config") if p.stem != BASE_FRAGMENT)
