"""The static busybox an initramfs runs: its shell, mount, modprobe and switch_root.

For guests of the host's own architecture it is the host's /bin/busybox (Debian's
busybox-static), as it always was, and no key names it. For another architecture it is
Debian's busybox-static of that architecture and of the guest's release, from the lab's
private apt setup, unpacked into the cache; its version is in the keys of the kernels
whose initramfs holds it, so a new one makes their initramfs again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.artifacts.apt import PrivateApt, arch_apt
from lab.core.cache import Cache
from lab.core.errors import BuildError, MissingPrerequisite
from lab.core.progress import SILENT, Progress
from lab.model.arches import Arch

PACKAGE = "busybox-static"
HOST_BUSYBOX = Path("/bin/busybox")
IN_PACKAGE = Path("bin/busybox")  # where the package puts it


class Busybox:
    def key(self) -> list[str]:
        """What it adds to the keys of the kernels whose initramfs holds it."""
        raise NotImplementedError

    def provide(self, progress: Progress = SILENT) -> Path:
        """The binary, fetched first where it has to be."""
        raise NotImplementedError


class HostBusybox(Busybox):
    def key(self) -> list[str]:
        # Nothing, as before other arches: the keys of the host arch's kernels stay valid.
        return []

    def provide(self, progress: Progress = SILENT) -> Path:
        if not HOST_BUSYBOX.exists():
            raise MissingPrerequisite("busybox (static)", "apt-get install busybox-static")
        return HOST_BUSYBOX


@dataclass(frozen=True)
class PackagedBusybox(Busybox):
    apt: PrivateApt  # listing the guest's architecture
    version: str

    def key(self) -> list[str]:
        return [self.apt.qualified(PACKAGE), self.version]

    def provide(self, progress: Progress = SILENT) -> Path:
        return self.apt.unpacked(PACKAGE, self.version, progress) / IN_PACKAGE


def busybox_for(arch: Arch, cache: Cache, progress: Progress = SILENT) -> Busybox:
    """The busybox of `arch`'s initramfs: the host's for its own arch, else the package of
    the guests' release (the host's busybox-static's own version, on a host of that
    release)."""
    apt = arch_apt(arch, cache, progress)
    if apt is None:
        return HostBusybox()
    version = apt.candidate(apt.qualified(PACKAGE))
    if version is None:
        raise BuildError("initramfs", f"{apt.mirror} serves no {apt.qualified(PACKAGE)}")
    return PackagedBusybox(apt, version)
