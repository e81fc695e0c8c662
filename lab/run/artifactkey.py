"""One key for every artifact a set of cells needs, found without building anything: what a
CI runner's cache is keyed by, so that a runner whose cache has that key builds nothing.

It names each cell's kernel as it resolves now (a Debian package version, a commit and
diff), its patches, requested config and arch, the QEMU (Debian's version, or the lab's
build key), and the builder and recipes of the root filesystem, the initramfs and the C
selftests; for another arch than the host's, also its root filesystem's second stage and
its initramfs's busybox (their versions).
"""

from __future__ import annotations

from lab.artifacts.busybox import busybox_for
from lab.artifacts.initramfs import RECIPE as INITRAMFS_RECIPE
from lab.artifacts.kbuild import wanted_text
from lab.artifacts.kernels import KERNEL_BUILDERS
from lab.artifacts.patches import patches_digest
from lab.artifacts.qemu import QEMU_SOURCES, qemu_key
from lab.artifacts.rootfs import BUILDER as ROOTFS_BUILDER
from lab.artifacts.rootfs import RECIPE as ROOTFS_RECIPE
from lab.artifacts.rootfs import tree_builder
from lab.artifacts.selftests import SELFTESTS
from lab.core.cache import Cache, content_key, tree_digest
from lab.core.versions import qemu_version
from lab.model.arches import ARCHES, Arch
from lab.model.scenario import Cell


def artifact_key(cells: list[Cell], cache: Cache) -> str:
    parts = [
        "vfio-lab-artifacts",
        ROOTFS_BUILDER,
        tree_digest(ROOTFS_RECIPE),
        tree_digest(INITRAMFS_RECIPE),
        tree_digest(SELFTESTS),
    ]
    for cell in cells:
        builder, arch = KERNEL_BUILDERS[cell.kernel.source], ARCHES[cell.arch]
        parts += [
            cell.kernel.label,
            builder.resolved(cell.kernel, arch, cache),
            patches_digest(cell.kernel.patches),
            wanted_text(cell.config, arch),
            qemu_identity(cell.scenario.machine.qemu, arch),
            *arch.key(),
            *tree_builder(arch).key(),
            *busybox_for(arch, cache).key(),
        ]
    return content_key(parts)


def qemu_identity(choice: str, arch: Arch) -> str:
    """The QEMU a scenario's machine.qemu names for guests of `arch`: the lab's by its
    build key (version, patches, configure options with the arch's target, compiler), any
    other by its version."""
    if choice == "lab":
        return qemu_key(arch)
    binary = QEMU_SOURCES[choice].placeholder(arch) if choice in QEMU_SOURCES else choice
    return f"{choice}:{qemu_version(binary)}"
