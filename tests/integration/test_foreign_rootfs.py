"""Another arch's root filesystem, built for real.

The aarch64 image on a host of another arch, in the suite's cache (empty on a cold run,
as CI's; shared with test_arm64, which boots it, so the suite builds it once): the first
stage by mmdebstrap's extract variant, the second by one boot of the image under TCG with
the lab's debian-stock arm64 kernel and initramfs (lab.run.firstboot). It needs the network (about
50 MB of packages, and the kernel) and qemu-system-aarch64, which `make test` installs
(`scripts/setup-host.sh --test`). It reads the image with debugfs: no loop mount, as the
lab packs it.

The second stage's init without a VM: the two stages of the host's own arch (the same
packages, run natively), the init in a chroot of private mount and pid namespaces. Root
only; about a minute.
"""

from __future__ import annotations

import os
import re
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
from lab.run.firstboot import StockKernelBoot

ARM = ARCHES["aarch64"]
pytestmark = pytest.mark.vm
NOT_FOUND = "File not found by ext2_lookup"  # debugfs's word for a path the image lacks


def _debugfs(image: Path, request: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True
    )


def debugfs(image: Path, request: str) -> str:
    """debugfs's answer. It exits 0 on an error too, saying so on stderr after its banner."""
    done = _debugfs(image, request)
    errors = done.stderr.splitlines()[1:]
    assert not errors, f"debugfs -R {request!r}: {errors}"
    return done.stdout


def exists(image: Path, path: str) -> bool:
    return NOT_FOUND not in _debugfs(image, f"stat {path}").stderr


def modes(image: Path, directory: str) -> dict[str, int]:
    """Each entry of `directory` but . and .., with its mode: `ls -p` says
    /inode/mode/uid/gid/name/size/ a line."""
    fields = [line.split("/") for line in debugfs(image, f"ls -p {directory}").splitlines()]
    return {f[5]: int(f[2], 8) for f in fields if len(f) > 5 and f[5] not in (".", "..")}


def stanzas(status: str) -> list[dict[str, str]]:
    """dpkg's status file, a dict of fields per package (continuation lines left out)."""
    return [dict(re.findall(r"^(\S+): (.*)$", block, re.M)) for block in status.split("\n\n")]


@pytest.mark.skipif(host_arch() == ARM.name, reason="aarch64 is this host's own: no second stage")
@pytest.mark.usefixtures("results")  # nothing of the boot may be left running or on disk
def test_an_aarch64_image_installs_its_packages_in_its_first_boot(tmp_path: Path) -> None:
    cache = Cache()
    keys = ensure_keys(cache)
    boot = StockKernelBoot(cache, print)
    image = rootfs.ensure_rootfs(cache, keys, ARM, boot, print)
    console = (image.base.parent / "second-stage.log").read_text(errors="replace")
    assert rootfs.DONE in console, console[-3000:]
    # Powered off through sysrq, not ended by the panic of an init that ran out (-no-reboot).
    assert "reboot: Power down" in console and "Kernel panic" not in console, console[-3000:]
    raw = tmp_path / "root.img"
    subprocess.run(["qemu-img", "convert", "-O", "raw", image.base, raw], check=True)

    packages = [p for p in stanzas(debugfs(raw, "cat /var/lib/dpkg/status")) if p]
    assert len(packages) > 100
    assert {
        p["Package"]: p["Status"] for p in packages if p["Status"] != "install ok installed"
    } == {}
    assert set(rootfs.packages()) <= {p["Package"] for p in packages}
    assert {p["Architecture"] for p in packages} <= {"arm64", "all"}
    # The lab's files after the maintainer scripts, as on a native build (merged /usr too).
    assert "Type: symlink" in debugfs(raw, "stat /bin"), "usrmerge converted the tree"
    assert debugfs(raw, "cat /usr/sbin/lab-init") == (rootfs.RECIPE / "lab-init").read_text()
    assert debugfs(raw, "cat /etc/ssh/sshd_config") == (rootfs.RECIPE / "sshd_config").read_text()
    assert debugfs(raw, "cat /etc/ssh/ssh_host_ed25519_key") == keys.host.read_text()
    assert debugfs(raw, "cat /etc/ssh/ssh_host_ed25519_key.pub") == keys.host_pub.read_text()
    host_keys = {n: m for n, m in modes(raw, "/etc/ssh").items() if n.startswith("ssh_host_")}
    assert sorted(host_keys) == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    assert host_keys["ssh_host_ed25519_key"] & 0o777 == 0o600, "sshd refuses a key others read"
    assert not exists(raw, f"/{rootfs.STAGE}"), "the stage and its .debs are gone"
    assert not exists(raw, "/usr/sbin/policy-rc.d")
    assert [n for n in modes(raw, f"/{rootfs.ARCHIVES}") if n.endswith(".deb")] == []


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
