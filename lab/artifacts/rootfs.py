"""The guest root filesystem: an mmdebstrap recipe turned into a cached qcow2 base.

One builder for root and for a normal user: mmdebstrap's unshare mode, which a user runs
as root of a namespace of their own (lab.artifacts.userns), and root as it is. Both give
the same tree (tests/integration/test_rootfs_modes.py compares them), so the cache key
names the builder but not who ran it. As root, mmdebstrap was also the faster: 101 s
against debootstrap's 181 s (benchmarks/recorded/2026-12-02-rootfs-2core.json).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lab.artifacts.apt import host_mirror
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
from lab.core.errors import MissingPrerequisite
from lab.core.files import copy_file
from lab.core.proc import run_logged
from lab.core.progress import SILENT, Progress
from lab.model.arches import Arch, require_native

RECIPE = IMAGES / "rootfs"
SUITE = "bookworm"
BUILDER = "mmdebstrap --mode=unshare --variant=minbase"
IMAGE_SIZE = "2G"


@dataclass(frozen=True)
class RootfsImage:
    base: Path  # qcow2, never written: every VM boots on its own overlay
    key: str


def packages() -> list[str]:
    lines = (RECIPE / "packages.txt").read_text().splitlines()
    return [p for line in lines if (p := line.split("#", 1)[0].strip())]


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
        ]
    )


def check_arch(arch: Arch) -> None:
    """mmdebstrap builds the host's own architecture: another's needs its maintainer
    scripts run in a guest first (docs/guest.md, "Guest architectures")."""
    require_native("a root filesystem", arch)


def ensure_rootfs(
    cache: Cache, keys: LabKeys, arch: Arch, progress: Progress = SILENT
) -> RootfsImage:
    check_arch(arch)
    key = rootfs_key(keys, arch)

    def build(scratch: Path) -> None:
        progress(
            "rootfs", f"building Debian {SUITE} root filesystem (cache key {key}); about a minute"
        )
        _build(scratch, keys, progress)

    with cache.lock(f"rootfs-{key}"):
        entry = cache.ensure(
            "rootfs",
            key,
            build,
            progress,
            made_by=f"Debian {SUITE} root filesystem ({IMAGE_SIZE})",
            legacy="base.qcow2",
        )
    return RootfsImage(base=entry / "base.qcow2", key=key)


def _build(scratch: Path, keys: LabKeys, progress: Progress) -> None:
    log = scratch / "build.log"
    as_root = namespace_root()  # first: a user without subordinate ids learns the fix at once
    root = scratch / "root"
    try:
        build_tree(root, keys, as_root, log, progress)
        pack_image(root, scratch / "base.qcow2", as_root, log)
    finally:
        remove_tree(root, as_root, log)
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
    root: Path, keys: LabKeys, as_root: list[str], log: Path, progress: Progress
) -> None:
    """The guest's tree in `root`, as the image holds it; `as_root` is namespace_root()'s."""
    if shutil.which(BUILDER.split()[0]) is None:
        raise MissingPrerequisite(BUILDER.split()[0], with_sudo("apt-get install mmdebstrap"))
    run_logged(
        [
            *as_root,
            *BUILDER.split(),
            f"--include={','.join(packages())}",
            SUITE,
            root,
            host_mirror(),
        ],
        artifact="rootfs",
        log=log,
        progress=progress,
        show=lambda line: line.startswith("I: "),
    )
    # Outside the namespace, and right all the same: what root owns there is the user's here.
    configure(root, keys)


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
