"""copy_file: a hard link where neither side is written in place, else a reflink or a
copy; and the call sites that must never share an inode with what the lab writes later."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from lab.artifacts import initramfs, kbuild, rootfs
from lab.artifacts.keys import LabKeys
from lab.core import files
from lab.core.errors import HostIOError
from lab.core.files import copy_file


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src"
    path.write_bytes(b"kernel image\n" * 1000)
    path.chmod(0o755)
    return path


def test_a_link_shares_the_inode_on_one_filesystem(src: Path, tmp_path: Path) -> None:
    copy_file(src, tmp_path / "dst", link=True)
    assert (tmp_path / "dst").stat().st_ino == src.stat().st_ino


@pytest.mark.parametrize("refused", [errno.EXDEV, errno.EPERM, errno.EMLINK])
def test_a_link_refused_falls_back_to_a_copy(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: int
) -> None:
    def link(*_: object) -> None:
        raise OSError(refused, os.strerror(refused))

    monkeypatch.setattr(os, "link", link)
    copy_file(src, tmp_path / "dst", link=True)
    dst = tmp_path / "dst"
    assert dst.stat().st_ino != src.stat().st_ino
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_mode & 0o777 == 0o755, "an executable stays one"


def test_no_reflink_falls_back_to_a_copy(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def ioctl(*_: object) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(files.fcntl, "ioctl", ioctl)
    copy_file(src, tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()


def test_a_link_that_fails_for_another_reason_blames_the_right_side(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(HostIOError) as gone:
        copy_file(tmp_path / "no-such-file", tmp_path / "dst", link=True)
    assert gone.value.path == tmp_path / "no-such-file"

    def link(*_: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "link", link)
    with pytest.raises(HostIOError) as full:
        copy_file(src, tmp_path / "dst", link=True)
    assert (full.value.path, full.value.errno) == (tmp_path / "dst", errno.ENOSPC)


def test_a_copy_over_a_hard_link_leaves_the_other_name_alone(src: Path, tmp_path: Path) -> None:
    """A destination that is another file's hard link (a cache entry's) is replaced, not
    truncated and written through."""
    cached = tmp_path / "cached"
    cached.write_bytes(b"the cache's copy\n")
    os.link(cached, tmp_path / "dst")
    copy_file(src, tmp_path / "dst")
    assert cached.read_bytes() == b"the cache's copy\n"
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()


def test_a_kernel_in_the_cache_shares_nothing_with_its_build_directory(tmp_path: Path) -> None:
    """The next build writes the build directory's outputs, perhaps in place."""
    build = tmp_path / "build"
    build.mkdir()
    built = kbuild.BuiltKernel("7.2", build / "bzImage", build / "vmlinux", build / ".config")
    for path in (built.image, built.vmlinux, built.config):
        path.write_text(f"{path.name} 1\n")
    entry = tmp_path / "entry"
    entry.mkdir()
    kbuild.store_artifact(built, entry)
    for path in (built.image, built.vmlinux, built.config):
        with path.open("r+") as f:
            f.write(f"{path.name} 2\n")
    stored = [(entry / n).read_text() for n in ("vmlinuz", "vmlinux", "config")]
    assert stored == ["bzImage 1\n", "vmlinux 1\n", ".config 1\n"]


def test_the_root_filesystem_chmods_its_own_key_not_the_labs(tmp_path: Path) -> None:
    keys = LabKeys(client=tmp_path / "keys" / "client", host=tmp_path / "keys" / "host")
    keys.host.parent.mkdir()
    for key in (keys.client, keys.host, keys.client_pub, keys.host_pub):
        key.write_text("key\n")
        key.chmod(0o644)
    root = tmp_path / "root"
    for d in ("sbin", "etc/ssh", "root", "dev"):
        (root / d).mkdir(parents=True)
    rootfs.configure(root, keys)
    assert keys.host.stat().st_mode & 0o777 == 0o644
    assert (root / "etc/ssh/ssh_host_ed25519_key").stat().st_ino != keys.host.stat().st_ino


def test_the_initramfs_stage_links_modules_it_only_reads(tmp_path: Path) -> None:
    src = tmp_path / "modules"
    (src / "kernel").mkdir(parents=True)
    (src / "kernel" / "vfio.ko").write_bytes(b"\x7fELF module")
    (src / "modules.order").write_text("kernel/vfio.ko\n")
    busybox = tmp_path / "busybox"  # whichever arch's the kernel needs
    busybox.write_bytes(b"\x7fELF busybox")
    stage = tmp_path / "stage"
    initramfs._stage_tree(stage, src, "7.2", ["kernel/vfio.ko"], busybox)
    staged = stage / "lib" / "modules" / "7.2"
    for rel in ("kernel/vfio.ko", "modules.order"):
        assert (staged / rel).stat().st_ino == (src / rel).stat().st_ino
    assert (stage / "bin" / "busybox").stat().st_ino == busybox.stat().st_ino
