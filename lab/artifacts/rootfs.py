"""The guest root filesystem: an mmdebstrap recipe turned into a cached qcow2 base.

One builder for root and for a normal user: mmdebstrap's unshare mode, which a user runs
as root of a namespace of their own (lab.artifacts.userns), and root as it is. Both give
the same tree (tests/integration/test_rootfs_modes.py compares them), so the cache key
names the builder but not who ran it. As root, mmdebstrap was also the faster: 101 s
against debootstrap's 181 s (benchmarks/recorded/2026-12-02-rootfs-2core.json).

Another architecture than the host's (aarch64 on x86_64) is built in two stages, neither
of which emulates anything on the host (docs/guest.md, "The aarch64 root filesystem"):
mmdebstrap's extract variant unpacks the same package set without running any of it, and
one boot of that image under TCG (a `FirstBoot`, which lab.run provides) installs the
packages with the guest's own dpkg. The disk it leaves is the cached base.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lab.artifacts.apt import RELEASE, host_mirror
from lab.artifacts.keys import LabKeys
from lab.artifacts.userns import (
    current_account,
    inner_id,
    namespace_root,
    subordinate_ranges,
    with_sudo,
)
from lab.core.cache import Cache, content_key, tree_digest
from lab.core.data import IMAGES
from lab.core.errors import BuildError, MissingPrerequisite
from lab.core.files import blaming, copy_file, make_dir, move, write_file
from lab.core.proc import capture, run_logged
from lab.core.progress import SILENT, Progress
from lab.model.arches import Arch, host_arch

RECIPE = IMAGES / "rootfs"
SECOND_STAGE_RECIPE = IMAGES / "rootfs-second-stage"
SUITE = RELEASE
BUILDER = "mmdebstrap --mode=unshare --variant=minbase"
IMAGE_SIZE = "2G"
# Another arch's first stage: the extract variant unpacks and runs nothing (so it needs no
# emulation), and apt's archive is kept for the second stage to install.
FIRST_STAGE = "mmdebstrap --mode=unshare --variant=extract --skip=cleanup/apt/cache"
# What minbase selects by itself and extract does not (mmdebstrap(1), VARIANTS): with it,
# the package set is the host arch's (bookworm: the same packages but lsb-base, an empty
# transitional package).
MINBASE = ("?essential", "?priority(required)")
ARCHIVES = Path("var/cache/apt/archives")
# In the tree, between the stages; the second stage's init names the same directory.
STAGE = Path("var/lib/vfio-lab-second-stage")
# configure()'s files where a maintainer script may write (openssh-server's makes host keys
# and an sshd_config), set aside until the second stage has run the scripts; lab-init's
# place is the second stage's own init meanwhile.
LAB_FILES = (
    "sbin/lab-init",
    "etc/ssh/sshd_config",
    "etc/ssh/ssh_host_ed25519_key",
    "etc/ssh/ssh_host_ed25519_key.pub",
)
DONE = "vfio-lab second stage: done"  # the console line of a second stage that finished


@dataclass(frozen=True)
class RootfsImage:
    base: Path  # qcow2, never written: every VM boots on its own overlay
    key: str


def packages() -> list[str]:
    lines = (RECIPE / "packages.txt").read_text().splitlines()
    return [p for line in lines if (p := line.split("#", 1)[0].strip())]


class FirstBoot(Protocol):
    def __call__(self, arch: Arch, disk: Path, console: Path) -> None:
        """Boot `arch`'s machine once on `disk` (a qcow2, written in place) with the lab's
        kernel and initramfs for that arch, its console into `console`; return once the
        guest has powered off."""


class TreeBuilder:
    """How the root filesystem of an arch is made from the recipe."""

    about: str  # how long a build takes, for its progress line

    def key(self) -> list[str]:
        """What it adds to the root filesystem's key."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def argv(self, root: Path, mirror: str) -> list[str]:
        """mmdebstrap's, making the tree in `root`."""
        raise NotImplementedError

    def finish_tree(self, root: Path, keys: LabKeys) -> None:
        """What the lab does to mmdebstrap's tree before it is packed."""
        raise NotImplementedError

    def finish_image(self, qcow2: Path, first_boot: FirstBoot, progress: Progress) -> None:
        """What the packed image needs before it is the base."""
        raise NotImplementedError


class NativeTree(TreeBuilder):
    """The host's own arch: minbase, its maintainer scripts run by mmdebstrap on the host."""

    about = "about a minute"

    def key(self) -> list[str]:
        return []  # as before other arches: the keys of the host arch's images stay valid

    def describe(self) -> str:
        return f"Debian {SUITE} root filesystem"

    def argv(self, root: Path, mirror: str) -> list[str]:
        return [*BUILDER.split(), f"--include={','.join(packages())}", SUITE, str(root), mirror]

    def finish_tree(self, root: Path, keys: LabKeys) -> None:
        configure(root, keys)

    def finish_image(self, qcow2: Path, first_boot: FirstBoot, progress: Progress) -> None:
        return None  # whole as packed


@dataclass(frozen=True)
class ForeignTree(TreeBuilder):
    """Another arch: its packages unpacked on the host (the first stage), installed by its
    own dpkg in one boot of the packed image (the second)."""

    arch: Arch
    about = "then one boot under TCG installs its packages (minutes)"

    def key(self) -> list[str]:
        return [FIRST_STAGE, *MINBASE, tree_digest(SECOND_STAGE_RECIPE)]

    def describe(self) -> str:
        return f"Debian {SUITE} root filesystem for {self.arch.name}"

    def argv(self, root: Path, mirror: str) -> list[str]:
        return [
            *FIRST_STAGE.split(),
            f"--arch={self.arch.debian}",
            *(f"--include={pattern}" for pattern in MINBASE),
            f"--include={','.join(packages())}",
            SUITE,
            str(root),
            mirror,
        ]

    def finish_tree(self, root: Path, keys: LabKeys) -> None:
        stage_packages(root)  # before configure(), which empties apt's archive
        configure(root, keys)
        set_aside_lab_files(root)

    def finish_image(self, qcow2: Path, first_boot: FirstBoot, progress: Progress) -> None:
        second_stage(self.arch, qcow2, first_boot, progress)


def tree_builder(arch: Arch) -> TreeBuilder:
    """The host's own arch is built as it always was; any other in two stages."""
    return NativeTree() if arch.name == host_arch() else ForeignTree(arch)


def rootfs_key(keys: LabKeys, arch: Arch) -> str:
    return content_key(
        [
            BUILDER,
            SUITE,
            IMAGE_SIZE,
            tree_digest(RECIPE),
            keys.host_pub.read_text(),
            keys.client_pub.read_text(),
            *arch.key(),
            *tree_builder(arch).key(),
        ]
    )


def ensure_rootfs(
    cache: Cache, keys: LabKeys, arch: Arch, first_boot: FirstBoot, progress: Progress = SILENT
) -> RootfsImage:
    """The arch's root filesystem, built if missing; `first_boot` runs another arch's second
    stage (the host's own arch never boots for its image)."""
    builder = tree_builder(arch)
    key = rootfs_key(keys, arch)

    def build(scratch: Path) -> None:
        progress("rootfs", f"building {builder.describe()} (cache key {key}); {builder.about}")
        _build(scratch, keys, arch, first_boot, progress)

    with cache.lock(f"rootfs-{key}"):
        entry = cache.ensure(
            "rootfs",
            key,
            build,
            progress,
            made_by=f"{builder.describe()} ({IMAGE_SIZE})",
            legacy="base.qcow2",
        )
    return RootfsImage(base=entry / "base.qcow2", key=key)


def _build(
    scratch: Path, keys: LabKeys, arch: Arch, first_boot: FirstBoot, progress: Progress
) -> None:
    log = scratch / "build.log"
    as_root = namespace_root()  # first: a user without subordinate ids learns the fix at once
    root = scratch / "root"
    try:
        build_tree(root, keys, arch, as_root, log, progress)
        pack_image(root, scratch / "base.qcow2", as_root, log)
    finally:
        remove_tree(root, as_root, log)
    tree_builder(arch).finish_image(scratch / "base.qcow2", first_boot, progress)
    progress("rootfs", "done")


def pack_image(root: Path, qcow2: Path, as_root: list[str], log: Path) -> None:
    """The tree as an ext4 image in qcow2. mkfs.ext4 reads owners where the tree was made."""
    raw = qcow2.with_suffix(".img")
    run_logged(
        [*as_root, "mkfs.ext4", "-q", "-F", "-L", "vfio-lab-root", "-d", root, raw, IMAGE_SIZE],
        artifact="rootfs",
        log=log,
    )
    run_logged(["qemu-img", "convert", "-O", "qcow2", raw, qcow2], artifact="rootfs", log=log)
    raw.unlink()


def build_tree(
    root: Path, keys: LabKeys, arch: Arch, as_root: list[str], log: Path, progress: Progress
) -> None:
    """The guest's tree in `root`, as the image holds it; `as_root` is namespace_root()'s."""
    if shutil.which(BUILDER.split()[0]) is None:
        raise MissingPrerequisite(BUILDER.split()[0], with_sudo("apt-get install mmdebstrap"))
    builder = tree_builder(arch)
    run_logged(
        [*as_root, *builder.argv(root, host_mirror())],
        artifact="rootfs",
        log=log,
        progress=progress,
        show=lambda line: line.startswith("I: "),
    )
    # Outside the namespace, and right all the same: what root owns there is the user's here.
    builder.finish_tree(root, keys)


def stage_packages(root: Path) -> None:
    """The first stage's .debs moved from apt's archive to STAGE, with the order the second
    stage installs them in."""
    debs = root / STAGE / "debs"
    make_dir(debs)
    for deb in sorted((root / ARCHIVES).glob("*.deb")):
        move(deb, debs / deb.name)
    essential = {deb.name: _essential(deb) for deb in sorted(debs.glob("*.deb"))}
    write_file(root / STAGE / "install-order", "".join(f"{n}\n" for n in install_order(essential)))


def _essential(deb: Path) -> bool:
    field = capture(["dpkg-deb", "--field", deb, "Essential"], artifact="rootfs")
    return field.strip() == "yes"


def install_order(essential: Mapping[str, bool]) -> list[str]:
    """The .debs' names, the Essential packages first (mmdebstrap installs them before the
    rest: base-passwd's, for one, makes the /etc/passwd other maintainer scripts need)."""
    return sorted(essential, key=lambda name: (not essential[name], name))


def set_aside_lab_files(root: Path) -> None:
    """LAB_FILES moved under STAGE for the second stage to put back, which it finds listed
    there; its own init in lab-init's place."""
    kept = root / STAGE / "lab-files"
    for rel in LAB_FILES:
        make_dir((kept / rel).parent)
        move(root / rel, kept / rel)
    write_file(root / STAGE / "lab-files.list", "".join(f"{rel}\n" for rel in LAB_FILES))
    copy_file(SECOND_STAGE_RECIPE / "init", root / "sbin" / "lab-init")


def second_stage(arch: Arch, qcow2: Path, first_boot: FirstBoot, progress: Progress) -> None:
    """The packed first stage booted once, which installs its packages in place; BuildError,
    with the console's tail, unless its init said it finished."""
    console = qcow2.parent / "second-stage.log"
    progress("rootfs", f"second stage: installing the packages in one boot (console: {console})")
    first_boot(arch, qcow2, console)
    with blaming(console):
        lines = console.read_text(errors="replace").splitlines() if console.exists() else []
    if not any(line.strip() == DONE for line in lines):
        raise BuildError(
            "rootfs", f"the second stage did not finish; console: {console}", lines[-30:]
        )


def tree_listing(root: Path) -> list[tuple[str, int, int | None, int | None]]:
    """Each path of a tree this user's build_tree made, with its mode and its owners as the
    guest will see them (a user's, back through the namespace that made them): what shows
    that a user's build is root's. None for an id the namespace does not map."""
    account = current_account()
    own = (account.uid, os.getegid())
    sub = None if account.uid == 0 else subordinate_ranges(account)
    entries = []
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        ids = [st.st_uid, st.st_gid]
        owners = (
            ids
            if sub is None
            else [inner_id(i, o, r) for i, o, r in zip(ids, own, sub, strict=True)]
        )
        entries.append((str(path.relative_to(root)), st.st_mode, owners[0], owners[1]))
    return entries


def remove_tree(root: Path, as_root: list[str], log: Path) -> None:
    """Removed where it was made: a user may not delete what subordinate ids own."""
    if root.exists():
        run_logged([*as_root, "rm", "-rf", "--one-file-system", root], artifact="rootfs", log=log)


def configure(root: Path, keys: LabKeys) -> None:
    """What the lab adds to the builder's tree: its init, sshd's keys and config."""
    # Copies (reflinks at best), never hard links: the key is chmod-ed below, and the root
    # is the lab's to change; a link would change the recipe and the lab's keys with it.
    copy_file(RECIPE / "lab-init", root / "sbin" / "lab-init")
    ssh = root / "etc" / "ssh"
    for old in ssh.glob("ssh_host_*"):
        old.unlink()
    copy_file(RECIPE / "sshd_config", ssh / "sshd_config")
    copy_file(keys.host, ssh / "ssh_host_ed25519_key")
    copy_file(keys.host_pub, ssh / "ssh_host_ed25519_key.pub")
    (ssh / "ssh_host_ed25519_key").chmod(0o600)
    dot_ssh = root / "root" / ".ssh"
    dot_ssh.mkdir(mode=0o700, exist_ok=True)
    copy_file(keys.client_pub, dot_ssh / "authorized_keys")
    (root / "lib" / "modules").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "hostname").write_text("vfio-lab\n")
    # The initramfs moves its devtmpfs over /dev. Emptied, it is the same whether the
    # builder could make device nodes (root) or not (a user's namespace).
    for node in (root / "dev").iterdir():
        _remove(node)
    # apt's downloads, lists and their scratch (`partial/`, empty, whose owner is _apt or
    # root depending on who ran the builder): the guest never runs apt.
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (root / junk).glob("*"):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()  # a user may not list a `partial/` that _apt owns, but may remove it
            else:
                path.unlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def create_overlay(base: Path, overlay: Path) -> None:
    run_logged(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, overlay],
        artifact="overlay",
        log=overlay.with_suffix(".log"),
    )
