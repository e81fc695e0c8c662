"""The guest architectures a machine can have (`machine.arch`), each a small class saying
what differs: the QEMU binary and machine, the CPU, the serial console, where kbuild
leaves the kernel image, the cross compiler, and Debian's name for it.

The registry at the bottom is the one place that lists which exist.
"""

from __future__ import annotations

import platform
from typing import ClassVar

from lab.core.registry import Registry
from lab.model.variants import Accel


def host_arch() -> str:
    """The host's architecture as `uname -m` (and the registry) names it."""
    return platform.machine()


class Arch:
    name: ClassVar[str]  # QEMU's and `uname -m`'s name
    doc: ClassVar[str]
    debian: ClassVar[str]  # Debian's architecture: dpkg's name, image package suffix
    kbuild: ClassVar[str]  # kbuild's ARCH=
    toolchain: ClassVar[str]  # the GNU triplet of its cross compiler, TRIPLET-gcc
    image: ClassVar[str]  # kbuild's target for the bootable image
    image_path: ClassVar[str]  # where that target leaves it, relative to the build directory
    console: ClassVar[str]  # the serial console's device
    qemu_package: ClassVar[str]  # Debian's package of the emulator
    default_iommu: ClassVar[str]  # the IOMMU model a scenario that names none gets
    # The -global that sizes the machine's 64-bit PCI window for large RAM BARs; None: its
    # default holds what the scenario rules allow (RAM_BARS_MAX).
    pci_hole64: ClassVar[str | None] = None

    @property
    def qemu_system(self) -> str:
        return f"qemu-system-{self.name}"

    @property
    def qemu_target(self) -> str:
        """QEMU's build target for that emulator: the lab builds its own QEMU per arch, so
        that a user of one arch never waits for another's build."""
        return f"{self.name}-softmmu"

    def machine(self, options: list[str]) -> str:
        """QEMU's -machine value, with the IOMMU model's options."""
        raise NotImplementedError

    def cpu(self, accel: Accel) -> str:
        """QEMU's -cpu value under `accel`: the host's CPU under KVM, all QEMU emulates
        under TCG."""
        return "host" if accel == "kvm" else "max"

    def cross_compile(self, host: str) -> str:
        """kbuild's CROSS_COMPILE= for building on `host`: none on its own kind."""
        return "" if host == self.name else f"{self.toolchain}-"

    def kbuild_args(self, host: str) -> list[str]:
        """What every `make` of a kernel tree for this arch on `host` is given. None on its
        own kind of host: the commands (and so the logs) of native builds are as they were."""
        cross = self.cross_compile(host)
        return [f"ARCH={self.kbuild}", f"CROSS_COMPILE={cross}"] if cross else []

    def runs_kvm(self, host: str) -> bool:
        """KVM runs guests of the host's own architecture only."""
        return host == self.name

    def key(self) -> list[str]:
        """What this arch adds to the keys of what is built or saved for it (kernels, root
        filesystems, selftests, snapshots, merged configs)."""
        return [self.name]


class X86_64(Arch):
    name = "x86_64"
    doc = "q35 with the guest kernel entered through PVH where it can be (the default)"
    debian = "amd64"
    kbuild = "x86"
    toolchain = "x86_64-linux-gnu"
    image = "bzImage"
    image_path = "arch/x86/boot/bzImage"
    console = "ttyS0"
    qemu_package = "qemu-system-x86"
    default_iommu = "intel-iommu"
    pci_hole64 = "q35-pcihost.pci-hole64-size"

    def machine(self, options: list[str]) -> str:
        return ",".join(["q35", *options])

    def cpu(self, accel: Accel) -> str:
        # With ERMS (and FSRM) Linux and glibc clear and copy memory with `rep stosb` and
        # `rep movsb`, which TCG runs a byte per step: zeroing 1 GiB took 1.5 s in a guest
        # on QEMU 10.0, 0.22 s with them hidden, when `rep stosq` is used instead.
        return "host" if accel == "kvm" else "max,-erms,-fsrm"

    def key(self) -> list[str]:
        # Nothing: the keys of everything built before the lab knew other arches stay
        # valid, and each other arch's key names it, so none is another's.
        return []


class Aarch64(Arch):
    name = "aarch64"
    doc = (
        "QEMU's virt with GICv3 (its ITS isolates MSIs, which VFIO requires) and a direct "
        "-kernel boot (no UEFI); TCG only on an x86_64 host"
    )
    debian = "arm64"
    kbuild = "arm64"
    toolchain = "aarch64-linux-gnu"
    image = "Image"
    image_path = "arch/arm64/boot/Image"
    console = "ttyAMA0"
    qemu_package = "qemu-system-arm"
    default_iommu = "smmuv3"
    pci_hole64 = None  # virt's high PCIe window is 512 GiB

    def machine(self, options: list[str]) -> str:
        # virt picks GICv2 under TCG with up to 8 CPUs: no ITS, so no isolated MSIs, and
        # VFIO_SET_IOMMU fails with EPERM ("No interrupt remapping support").
        return ",".join(["virt", "gic-version=3", *options])

    def cpu(self, accel: Accel) -> str:
        # TCG's architected pointer-authentication algorithm (QARMA) is slow to emulate;
        # the implementation-defined one is not.
        return "host" if accel == "kvm" else "max,pauth-impdef=on"


ARCHES: Registry[Arch] = Registry("architecture", {a.name: a() for a in (X86_64, Aarch64)})
DEFAULT_ARCH = X86_64.name
