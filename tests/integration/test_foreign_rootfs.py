"""Another arch's root filesystem, built for real: the second stage's init without a VM.

The two stages of the host's own arch (the same packages, run natively), the init in a
chroot of private mount and pid namespaces. Root only; about a minute. The aarch64 image's
second stage, one boot under TCG, joins this file with its first passing run; until then
`run`, `shell` and `repro` refuse aarch64 cells (lab.artifacts.rootfs.check_arch).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from lab.artifacts import rootfs
from lab.artifacts.apt import host_mirror
from lab.artifacts.keys import ensure_keys
from lab.core.cache import Cache
from lab.core.proc import run_logged
from lab.model.arches import ARCHES, host_arch

ARM = ARCHES["aarch64"]
pytestmark = pytest.mark.vm


def debugfs(image: Path, request: str) -> str:
    done = subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True
    )
    return done.stdout


def chroot_init() -> str:
    """The second stage's init for a chroot on this host: it exits where it would power the
    machine off, and mounts no sysfs (a chroot's sysrq-trigger and sysfs are the host's)."""
    init = (rootfs.SECOND_STAGE_RECIPE / "init").read_text()
    off = init[init.index("off() {") : init.index("fail() {")]
    safe = init.replace(off, "off() {\n    sync\n    exit 0\n}\n\n")
    safe = safe.replace("mount -t sysfs sysfs /sys\n", "")
    assert not [w for w in ("sysrq", "remount", "sysfs") if w in safe], "the host's to keep"
    return safe


def second_stage_in_chroot(work: Path) -> subprocess.CompletedProcess[str]:
    """The host arch's packages through both stages, the second in a chroot; returns how
    its init ran. The tree is left in work/root."""
    root = work / "root"
    builder = rootfs.ForeignTree(ARCHES[host_arch()])
    run_logged(builder.argv(root, host_mirror()), artifact="rootfs", log=work / "build.log")
    builder.finish_tree(root, ensure_keys(Cache(work / "cache")))
    (root / "sbin" / "lab-init").write_text(chroot_init())
    # What the guest's devtmpfs has and maintainer scripts use.
    for name, minor in (("null", 3), ("zero", 5), ("full", 7), ("random", 8), ("urandom", 9)):
        os.mknod(root / "dev" / name, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    return subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "--propagation", "private",
         "chroot", str(root), "/sbin/lab-init"],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot and mknod: needs root")
def test_the_second_stage_s_init_installs_the_host_arch_s_packages(tmp_path: Path) -> None:
    done = second_stage_in_chroot(tmp_path)
    assert done.returncode == 0 and rootfs.DONE in done.stdout, done.stdout[-3000:]
    root = tmp_path / "root"
    status = (root / "var/lib/dpkg/status").read_text()
    states = [line for line in status.splitlines() if line.startswith("Status: ")]
    assert len(states) > 100 and set(states) == {"Status: install ok installed"}
    for package in rootfs.packages():
        assert f"Package: {package}\nStatus: install ok installed\n" in status, package
    assert (root / "bin").is_symlink(), "usrmerge converted the tree, as on a native build"
    lab_init = (root / "usr/sbin/lab-init").read_bytes()
    assert lab_init == (rootfs.RECIPE / "lab-init").read_bytes()
    sshd_config = (root / "etc/ssh/sshd_config").read_bytes()
    assert sshd_config == (rootfs.RECIPE / "sshd_config").read_bytes()
    assert sorted(p.name for p in (root / "etc/ssh").glob("ssh_host_*")) == [
        "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub",
    ]  # fmt: skip
    assert not (root / rootfs.STAGE).exists() and not (root / "usr/sbin/policy-rc.d").exists()
    assert list((root / rootfs.ARCHIVES).iterdir()) == []
