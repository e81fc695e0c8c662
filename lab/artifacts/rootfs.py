"""The guest root filesystem: a debootstrap recipe turned into a cached qcow2 base."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from lab.artifacts.apt import host_mirror
from lab.artifacts.keys import LabKeys
from lab.core.cache import Cache, content_key, tree_digest
from lab.core.data import IMAGES
from lab.core.files import copy_file
from lab.core.proc import run_logged
from lab.core.progress import SILENT, Progress

RECIPE = IMAGES / "rootfs"
SUITE = "bookworm"
IMAGE_SIZE = "2G"


@dataclass(frozen=True)
class RootfsImage:
    base: Path  # qcow2, never written: every VM boots on its own overlay
    key: str


def packages() -> list[str]:
    lines = (RECIPE / "packages.txt").read_text().splitlines()
    return [p for line in lines if (p := line.split("#", 1)[0].strip())]


def rootfs_key(keys: LabKeys) -> str:
    return content_key(
        [
            SUITE,
            IMAGE_SIZE,
            tree_digest(RECIPE),
            keys.host_pub.read_text(),
            keys.client_pub.read_text(),
        ]
    )


def ensure_rootfs(cache: Cache, keys: LabKeys, progress: Progress = SILENT) -> RootfsImage:
    key = rootfs_key(keys)

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
    root = scratch / "root"
    run_logged(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages())}",
            SUITE,
            root,
            host_mirror(),
        ],
        artifact="rootfs",
        log=log,
        progress=progress,
        show=lambda line: line.startswith(
            ("I: Retrieving Release", "I: Extracting", "I: Configuring ")
        ),
    )
    _configure(root, keys)
    raw = scratch / "root.img"
    run_logged(
        ["mkfs.ext4", "-q", "-F", "-L", "vfio-lab-root", "-d", root, raw, IMAGE_SIZE],
        artifact="rootfs",
        log=log,
    )
    shutil.rmtree(root)
    run_logged(
        ["qemu-img", "convert", "-O", "qcow2", raw, scratch / "base.qcow2"],
        artifact="rootfs",
        log=log,
    )
    raw.unlink()
    progress("rootfs", "done")


def _configure(root: Path, keys: LabKeys) -> None:
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
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (root / junk).glob("*"):
            if path.is_file():
                path.unlink()


def create_overlay(base: Path, overlay: Path) -> None:
    run_logged(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, overlay],
        artifact="overlay",
        log=overlay.with_suffix(".log"),
    )
