"""The userspace of a guest of another arch than the host's (aarch64 on x86_64): the
initramfs's busybox per arch, the root filesystem's two stages, and the one boot of the
second, with fakes at the seams (apt, mmdebstrap, dpkg-deb, QEMU): nothing is fetched,
built or booted here. The host arch's own path is checked to be what it always was."""

from __future__ import annotations

import shutil
import stat
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from lab.artifacts import apt, busybox, kernels, rootfs
from lab.artifacts.busybox import HostBusybox, PackagedBusybox, busybox_for
from lab.artifacts.kernels import KernelArtifact
from lab.artifacts.keys import LabKeys
from lab.artifacts.qemu import QemuBinary
from lab.core.cache import Cache
from lab.core.errors import BuildError, InfraError
from lab.model.arches import ARCHES, Arch
from lab.model.kernelspec import KernelSpec
from lab.run import firstboot
from lab.vm.qemu import build_argv
from tests.unit.test_arches import x86_host  # noqa: F401 (a fixture)
from tests.unit.test_rootless import fake_tree

X86, ARM = ARCHES["x86_64"], ARCHES["aarch64"]
pytestmark = pytest.mark.usefixtures("x86_host")


# -- the initramfs's busybox ------------------------------------------------------------------


@pytest.fixture
def arm64_apt(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The private arm64 setup answering busybox-static:arm64's candidate (its lists as if
    fresh); returns the apt-cache argv it was asked with."""
    asked: list[list[str]] = []

    def apt_cache(argv: list[str], **kw: object) -> str:
        asked.append(argv)
        return f"{argv[-1]}:\n  Installed: (none)\n  Candidate: 1:1.35.0-4+deb12u1+b1\n"

    monkeypatch.setattr(apt.PrivateApt, "update", lambda self, progress: None)
    monkeypatch.setattr(apt, "capture", apt_cache)
    return asked


def test_the_host_arch_keeps_the_host_s_busybox_and_no_key(tmp_path, arm64_apt) -> None:
    chosen = busybox_for(X86, Cache(tmp_path))
    assert isinstance(chosen, HostBusybox) and chosen.key() == []
    assert not arm64_apt, "the host's own arch asks no private apt"
    if busybox.HOST_BUSYBOX.exists():
        assert chosen.provide() == Path("/bin/busybox")


def test_another_arch_gets_the_guest_release_s_package(tmp_path, arm64_apt) -> None:
    chosen = busybox_for(ARM, Cache(tmp_path))
    assert isinstance(chosen, PackagedBusybox)
    assert chosen.key() == ["busybox-static:arm64", "1:1.35.0-4+deb12u1+b1"]
    (argv,) = arm64_apt
    # bookworm's, not sid's newer one: the private setup lists sid too.
    assert argv[-2:] == ["policy", "busybox-static:arm64"]
    assert "APT::Default-Release=bookworm" in argv and "APT::Architectures::=arm64" in argv
    busybox_for(ARM, Cache(tmp_path))
    assert len(arm64_apt) == 1, "asked once per refresh of the lists"


def test_no_package_in_the_mirror_is_a_build_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(apt.PrivateApt, "update", lambda self, progress: None)
    monkeypatch.setattr(apt, "capture", lambda argv, **kw: "  Candidate: (none)\n")
    with pytest.raises(BuildError, match="serves no busybox-static:arm64"):
        busybox_for(ARM, Cache(tmp_path))


def fake_fetch(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """apt-get download and dpkg-deb -x of a busybox package; returns what was fetched."""
    fetched: list[str] = []

    def download(self: apt.PrivateApt, package: str, version: str, dest: Path) -> Path:
        fetched.append(f"{self.qualified(package)}={version}")
        deb = dest / f"{package}_{version}_{self.foreign}.deb"
        deb.write_bytes(b"!<arch>\n")
        return deb

    def dpkg_deb(argv: list[object], **kw: object) -> None:
        assert argv[:2] == ["dpkg-deb", "-x"]
        tree = Path(str(argv[3]))
        (tree / "bin").mkdir(parents=True)
        (tree / "bin" / "busybox").write_bytes(b"\x7fELF aarch64")

    monkeypatch.setattr(apt.PrivateApt, "download", download)
    monkeypatch.setattr(apt, "run_logged", dpkg_deb)
    return fetched


def test_the_package_is_unpacked_once_into_the_cache_by_arch_and_version(
    tmp_path, monkeypatch
) -> None:
    fetched = fake_fetch(monkeypatch)
    cache = Cache(tmp_path)
    arm64 = apt.PrivateApt(cache, "http://m", foreign="arm64", release="bookworm")
    path = PackagedBusybox(arm64, "1:1.35.0-4").provide()
    assert path.read_bytes() == b"\x7fELF aarch64"
    assert path.relative_to(cache.root).parts[0] == "packages"
    assert PackagedBusybox(arm64, "1:1.35.0-4").provide() == path
    assert fetched == ["busybox-static:arm64=1:1.35.0-4"]
    newer = PackagedBusybox(arm64, "1:1.35.0-5").provide()
    armhf = PackagedBusybox(apt.PrivateApt(cache, "http://m", foreign="armhf"), "1:1.35.0-4")
    assert len({path, newer, armhf.provide()}) == 3
    assert not list(cache.entry("packages", "x").parent.glob("*/*.deb")), "the .deb goes"


def test_the_busybox_version_is_in_another_arch_s_kernel_keys(tmp_path) -> None:
    arm64 = apt.PrivateApt(Cache(tmp_path), "http://m", foreign="arm64", release="bookworm")
    image = "linux-image-6.1.0-50-arm64"
    keys = {
        kernels.stock_key(image, "6.1.176-1", ARM, PackagedBusybox(arm64, version))
        for version in ("1:1.35.0-4", "1:1.35.0-5")
    }
    assert len(keys) == 2


# -- the root filesystem: the first stage -------------------------------------------------------


def test_the_host_arch_s_tree_is_built_as_it_always_was(tmp_path) -> None:
    builder = rootfs.tree_builder(X86)
    assert isinstance(builder, rootfs.NativeTree) and builder.key() == []
    assert builder.argv(tmp_path / "root", "http://m/debian") == [
        "mmdebstrap", "--mode=unshare", "--variant=minbase",
        "--include=python3,python3-pytest,openssh-server,iproute2,kmod,pciutils",
        "bookworm", str(tmp_path / "root"), "http://m/debian",
    ]  # fmt: skip


def test_another_arch_s_first_stage_unpacks_minbase_s_packages_and_keeps_them(tmp_path) -> None:
    builder = rootfs.tree_builder(ARM)
    assert isinstance(builder, rootfs.ForeignTree)
    assert builder.argv(tmp_path / "root", "http://m/debian") == [
        "mmdebstrap", "--mode=unshare", "--variant=extract", "--skip=cleanup/apt/cache",
        "--arch=arm64", "--include=?essential", "--include=?priority(required)",
        "--include=python3,python3-pytest,openssh-server,iproute2,kmod,pciutils",
        "bookworm", str(tmp_path / "root"), "http://m/debian",
    ]  # fmt: skip
    assert builder.key()[:3] == [rootfs.FIRST_STAGE, "?essential", "?priority(required)"]


def test_the_essential_packages_install_first() -> None:
    order = rootfs.install_order(
        {"apt_2.6.1_arm64.deb": False, "dash_0.5.12-2_arm64.deb": True,
         "base-passwd_3.6.1_arm64.deb": True, "python3_3.11.2-1_arm64.deb": False}
    )  # fmt: skip
    assert order == [
        "base-passwd_3.6.1_arm64.deb", "dash_0.5.12-2_arm64.deb",
        "apt_2.6.1_arm64.deb", "python3_3.11.2-1_arm64.deb",
    ]  # fmt: skip


def lab_keys(tmp_path: Path) -> LabKeys:
    keys = LabKeys(client=tmp_path / "keys" / "client", host=tmp_path / "keys" / "host")
    keys.client.parent.mkdir(exist_ok=True)
    for key in (keys.client, keys.client_pub, keys.host, keys.host_pub):
        key.write_text(f"{key.name}\n")
    return keys


def first_stage_tree(root: Path) -> None:
    """What mmdebstrap's extract variant leaves, as far as the lab touches it."""
    fake_tree(root)
    for name in ("base-passwd_3.6.1_arm64.deb", "openssh-server_1%3a9.2p1_arm64.deb"):
        (root / rootfs.ARCHIVES / name).write_bytes(b"!<arch>\n")


def essential_field(argv: list[object], **kw: object) -> str:
    assert [str(a) for a in argv[:2]] == ["dpkg-deb", "--field"] and argv[3] == "Essential"
    return "yes\n" if Path(str(argv[2])).name.startswith("base-passwd") else "\n"


def test_the_first_stage_tree_is_readied_for_the_second(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(rootfs, "capture", essential_field)
    root = tmp_path / "root"
    first_stage_tree(root)
    keys = lab_keys(tmp_path)
    rootfs.tree_builder(ARM).finish_tree(root, keys)
    stage = root / rootfs.STAGE
    assert sorted(p.name for p in (stage / "debs").iterdir()) == [
        "base-passwd_3.6.1_arm64.deb", "openssh-server_1%3a9.2p1_arm64.deb",
    ]  # fmt: skip
    assert (stage / "install-order").read_text().splitlines() == [
        "base-passwd_3.6.1_arm64.deb", "openssh-server_1%3a9.2p1_arm64.deb",
    ]  # fmt: skip
    assert list((root / rootfs.ARCHIVES).iterdir()) == [], "configure() still empties it"
    # The lab's files wait for the maintainer scripts; the second stage's init runs first.
    assert (stage / "lab-files.list").read_text().splitlines() == list(rootfs.LAB_FILES)
    kept = stage / "lab-files"
    assert (kept / "etc/ssh/ssh_host_ed25519_key").read_text() == "host\n"
    assert stat.S_IMODE((kept / "etc/ssh/ssh_host_ed25519_key").stat().st_mode) == 0o600
    assert (kept / "sbin/lab-init").read_bytes() == (rootfs.RECIPE / "lab-init").read_bytes()
    init = root / "sbin" / "lab-init"
    assert init.read_bytes() == (rootfs.SECOND_STAGE_RECIPE / "init").read_bytes()
    assert init.stat().st_mode & 0o111
    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    assert (root / "root/.ssh/authorized_keys").read_text() == "client.pub\n"


def test_the_second_stage_s_init_names_what_the_first_left() -> None:
    init = (rootfs.SECOND_STAGE_RECIPE / "init").read_text()
    assert f"stage=/{rootfs.STAGE}\n" in init
    for name in ('"$stage/debs"', "../install-order", '"$stage/lab-files.list"',
                 '"$stage/lab-files/$path"', f'echo "{rootfs.DONE}"'):  # fmt: skip
        assert name in init
    assert init.startswith("#!/bin/sh\n"), "runs before any package is configured: dash is there"


# -- the second stage ---------------------------------------------------------------------------


def booting(console_lines: list[str], seen: list[tuple[Arch, Path, Path]]) -> rootfs.FirstBoot:
    def boot(arch: Arch, disk: Path, console: Path) -> None:
        seen.append((arch, disk, console))
        console.write_text("".join(f"{line}\r\n" for line in console_lines))

    return boot


def test_the_second_stage_is_done_only_when_its_init_says_so(tmp_path) -> None:
    seen: list[tuple[Arch, Path, Path]] = []
    qcow2 = tmp_path / "base.qcow2"
    done = booting(["vfio-lab second stage: installing 2 packages", rootfs.DONE], seen)
    rootfs.second_stage(ARM, qcow2, done, print)
    assert seen == [(ARM, qcow2, tmp_path / "second-stage.log")]
    failed = booting(["dpkg: error", "vfio-lab second stage: failed: dpkg --audit: x"], seen)
    with pytest.raises(BuildError, match="second stage did not finish") as info:
        rootfs.second_stage(ARM, qcow2, failed, print)
    assert info.value.log_tail[-1] == "vfio-lab second stage: failed: dpkg --audit: x"
    with pytest.raises(BuildError, match="second stage did not finish"):
        rootfs.second_stage(ARM, qcow2, lambda arch, disk, console: None, print)


def fake_builders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """mmdebstrap, mkfs.ext4, qemu-img and rm as the build runs them; returns each command."""
    ran: list[str] = []

    def run(argv: list[object], **kw: object) -> None:
        args = [str(a) for a in argv]
        ran.append(args[0])
        if args[0] == "mmdebstrap":
            first_stage_tree(Path(args[-2]))
        elif args[0] == "mkfs.ext4":
            Path(args[-2]).write_bytes(b"ext4")
        elif args[0] == "qemu-img":
            Path(args[-1]).write_bytes(b"QFI\xfb")
        elif args[0] == "rm":
            shutil.rmtree(args[-1])

    monkeypatch.setattr(rootfs, "run_logged", run)
    monkeypatch.setattr(rootfs, "capture", essential_field)
    monkeypatch.setattr(rootfs, "namespace_root", lambda: [])
    monkeypatch.setattr(rootfs.shutil, "which", lambda name: f"/usr/bin/{name}")
    return ran


def test_another_arch_s_image_is_cached_after_its_second_stage(tmp_path, monkeypatch) -> None:
    ran = fake_builders(monkeypatch)
    seen: list[tuple[Arch, Path, Path]] = []
    cache, keys = Cache(tmp_path / "cache"), lab_keys(tmp_path)
    image = rootfs.ensure_rootfs(cache, keys, ARM, booting([rootfs.DONE], seen))
    assert ran == ["mmdebstrap", "mkfs.ext4", "qemu-img", "rm"]
    ((arch, disk, console),) = seen
    assert arch is ARM and disk.name == "base.qcow2" and console.name == "second-stage.log"
    assert image.key == rootfs.rootfs_key(keys, ARM) and image.base.read_bytes() == b"QFI\xfb"
    assert (image.base.parent / "second-stage.log").exists(), "kept with the image"
    rootfs.ensure_rootfs(cache, keys, ARM, booting([], seen))
    assert len(seen) == 1, "cached: no second boot"


def test_a_failed_second_stage_caches_nothing(tmp_path, monkeypatch) -> None:
    fake_builders(monkeypatch)
    cache, keys = Cache(tmp_path / "cache"), lab_keys(tmp_path)
    with pytest.raises(BuildError):
        rootfs.ensure_rootfs(cache, keys, ARM, booting(["kernel panic"], []))
    assert not cache.entry("rootfs", rootfs.rootfs_key(keys, ARM)).exists()


def test_the_host_arch_s_image_never_boots(tmp_path, monkeypatch) -> None:
    ran = fake_builders(monkeypatch)
    monkeypatch.setattr(rootfs, "capture", pytest.fail)
    image = rootfs.ensure_rootfs(Cache(tmp_path / "c"), lab_keys(tmp_path), X86, pytest.fail)
    assert ran == ["mmdebstrap", "mkfs.ext4", "qemu-img", "rm"]
    assert not (image.base.parent / "second-stage.log").exists()


# -- the one boot (lab.run.firstboot) ------------------------------------------------------------


def kernel(tmp_path: Path) -> KernelArtifact:
    k = tmp_path / "k"
    return KernelArtifact("debian-stock", "6.1.0-50-arm64", "x", k / "vmlinuz", k / "i", "aa")


def test_the_second_stage_machine_is_the_arch_s_under_tcg_on_the_image(tmp_path) -> None:
    disk, console = tmp_path / "base.qcow2", tmp_path / "second-stage.log"
    cfg = firstboot.second_stage_config(
        ARM, kernel(tmp_path), "qemu-system-aarch64", disk, console, tmp_path / "s", 10022
    )
    argv = build_argv(cfg)
    assert argv[0] == "qemu-system-aarch64" and "virt,gic-version=3,iommu=smmuv3" in argv
    assert argv[argv.index("-accel") + 1] == "tcg,thread=multi"
    assert f"file={disk},format=qcow2,if=none,id=root,cache=unsafe" in argv
    assert not [a for a in argv if "edu" in a], "no test device"
    assert "-no-reboot" in argv, "a panicking init ends the boot too"


class FakeMachine:
    """QEMU that exits after `polls` looks (None: never)."""

    polls: ClassVar[int | None] = 2
    made: ClassVar[list[FakeMachine]] = []

    def __init__(self, argv: list[str], qmp: Path, log: Path, console: Path) -> None:
        self.argv, self.log, self.console, self.looks, self.stopped = argv, log, console, 0, False
        FakeMachine.made.append(self)

    def __enter__(self) -> FakeMachine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped = True

    def exit_status(self, wait: float = 0.0) -> int | None:
        self.looks += 1
        return 0 if self.polls is not None and self.looks >= self.polls else None


@pytest.fixture
def fake_qemu(tmp_path, monkeypatch) -> type[FakeMachine]:
    class StockKernel:
        def prepare(self, spec: KernelSpec, arch: Arch, *_: object) -> KernelArtifact:
            assert (spec.source, spec.arg, arch) == ("debian-stock", "", ARM)
            return kernel(tmp_path)

    monkeypatch.setattr(firstboot, "KERNEL_BUILDERS", {"debian-stock": StockKernel()})
    monkeypatch.setattr(
        firstboot,
        "provide_qemu",
        lambda choice, arch, cache, progress: QemuBinary(arch.qemu_system, choice, "7.2.19"),
    )
    monkeypatch.setattr(firstboot, "Machine", FakeMachine)
    monkeypatch.setattr(firstboot, "POLL_S", 0.0)
    FakeMachine.made, FakeMachine.polls = [], 2
    return FakeMachine


def test_the_boot_waits_for_the_guest_to_power_off(tmp_path, fake_qemu) -> None:
    console = tmp_path / "second-stage.log"
    firstboot.StockKernelBoot(Cache(tmp_path / "c"))(ARM, tmp_path / "base.qcow2", console)
    (machine,) = fake_qemu.made
    assert machine.argv[0] == "qemu-system-aarch64" and machine.console == console
    assert machine.log == tmp_path / "second-stage-qemu.log"
    assert machine.looks == 2 and machine.stopped


def test_a_boot_past_its_deadline_or_interrupted_is_stopped(
    tmp_path, fake_qemu, monkeypatch
) -> None:
    fake_qemu.polls = None
    stopping = threading.Event()
    boot = firstboot.StockKernelBoot(Cache(tmp_path / "c"), print, stopping)
    (tmp_path / "second-stage.log").write_text("Unpacking python3.11 ...\n")
    monkeypatch.setattr(firstboot, "DEADLINE_S", 0.0)
    with pytest.raises(BuildError, match="did not end within 0 s") as info:
        boot(ARM, tmp_path / "base.qcow2", tmp_path / "second-stage.log")
    assert info.value.log_tail == ["Unpacking python3.11 ..."]
    stopping.set()
    with pytest.raises(InfraError, match="interrupted"):
        boot(ARM, tmp_path / "base.qcow2", tmp_path / "second-stage.log")
    assert all(m.stopped for m in fake_qemu.made)
