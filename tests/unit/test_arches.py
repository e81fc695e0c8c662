"""Guest architectures (machine.arch) without booting or building anything: the registry,
the scenario rules and the axis, the aarch64 QEMU command line, cross kbuild, the arch in
every cache key, the private apt setup for arm64 images, an aarch64 cell taken on to its
work, and the lab's QEMU, which is not built for another arch yet."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest

from lab.artifacts import apt, kbuild, kernels, rootfs, selftests
from lab.artifacts.busybox import HostBusybox, PackagedBusybox
from lab.artifacts.kbuild import SourceTree, build_dir_path, build_key, compile_kernel
from lab.artifacts.kconfig import fragment_values, requested
from lab.artifacts.keys import LabKeys
from lab.artifacts.selftests import Target
from lab.artifacts.sysroot import Sysroot
from lab.cli import main
from lab.core.cache import Cache, content_key, tree_digest
from lab.core.errors import MissingPrerequisite, ScenarioError, UsageError
from lab.core.registry import UnknownVariant
from lab.model import scenario
from lab.model.arches import ARCHES
from lab.model.kernelspec import available_fragments
from lab.model.suites import SUITES
from lab.model.variants import DeviceConfig, model_modules
from lab.run import booter
from lab.run.artifactkey import qemu_identity
from lab.run.booter import snapshot_key
from lab.vm import accel
from lab.vm.qemu import build_argv, kernel_cmdline
from tests.unit.test_qemu_argv import config
from tests.unit.test_scenario import error_of, write
from tests.unit.test_snapshot import prepared

X86, ARM = ARCHES["x86_64"], ARCHES["aarch64"]


@pytest.fixture
def x86_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """An x86_64 host wherever the test runs: what is native is the host's to say."""
    for module in ("lab.model.arches", "lab.model.scenario", "lab.artifacts.kbuild",
                   "lab.artifacts.apt", "lab.artifacts.rootfs", "lab.cli.run",
                   "lab.vm.accel"):  # fmt: skip
        monkeypatch.setattr(f"{module}.host_arch", lambda: "x86_64")


# -- the QEMU command line ---------------------------------------------------------------


def arm(**overrides: object) -> list[str]:
    base: dict[str, object] = dict(
        arch="aarch64", iommu="smmuv3", qemu="qemu-system-aarch64", hugepages=()
    )
    return build_argv(config(**{**base, **overrides}))


def test_the_aarch64_argv_matches_golden(golden) -> None:
    golden("argv-tcg-smmuv3-aarch64-edu.json", json.dumps(arm(), indent=2) + "\n")


def test_aarch64_is_virt_with_gicv3_and_the_smmuv3_and_a_cheap_pauth() -> None:
    argv = arm()
    assert argv[0] == "qemu-system-aarch64"
    # GICv2 (virt's default under TCG with <= 8 CPUs) has no ITS: VFIO refuses the group.
    assert argv[argv.index("-machine") + 1] == "virt,gic-version=3,iommu=smmuv3"
    assert argv[argv.index("-cpu") + 1] == "max,pauth-impdef=on"
    assert argv[argv.index("-accel") + 1] == "tcg,thread=multi"
    assert "intel-iommu" not in " ".join(argv) and "q35" not in " ".join(argv)
    # Direct -kernel boot (no firmware), edu behind its root port as on x86.
    assert argv[argv.index("-kernel") + 1] == "/cache/kernels/k/vmlinuz"
    assert argv[-4:] == [
        "-device", "pcie-root-port,id=rp0,chassis=1",
        "-device", "edu,bus=rp0,dma_mask=0xffffffffffffffff",
    ]  # fmt: skip
    kvm = arm(accel="kvm")  # on an aarch64 host
    assert kvm[kvm.index("-cpu") + 1] == "host"


def test_the_console_is_the_arch_s_and_intel_s_words_stay_off() -> None:
    words = kernel_cmdline(config(arch="aarch64", iommu="smmuv3")).split()
    assert words[0] == "console=ttyAMA0" and "console=ttyS0" not in words
    assert "intel_iommu=on" not in words
    assert kernel_cmdline(config()).split()[0] == "console=ttyS0"


def test_large_ram_bars_size_q35_s_window_only() -> None:
    big = (DeviceConfig("ivshmem", ram_bar_size=32 << 30, ram_bar_index=2),)
    assert "q35-pcihost.pci-hole64-size=68719476736" in build_argv(config(devices=big))
    assert "-global" not in arm(devices=big)  # virt's window is 512 GiB


def test_commas_in_the_aarch64_paths_are_doubled() -> None:
    argv = arm(disk=Path("/tmp/a,b/overlay.qcow2"), name="vfio-lab:x,y")
    assert argv[argv.index("-drive") + 1].startswith("file=/tmp/a,,b/overlay.qcow2,")
    assert argv[argv.index("-name") + 1] == "guest=vfio-lab:x,,y,process=vfio-lab"


def test_the_dry_run_shows_the_aarch64_command(capsys, tmp_path, x86_host) -> None:
    path = write(tmp_path, "machine: {arch: aarch64}\n")
    assert main(["run", "--dry-run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "# qemu: system: qemu-system-aarch64 " in out
    (line,) = [line for line in out.splitlines() if not line.startswith("#")]
    argv = shlex.split(line)
    assert argv[0] == "qemu-system-aarch64"
    assert "virt,gic-version=3,iommu=smmuv3" in argv and "console=ttyAMA0" in " ".join(argv)
    assert argv[argv.index("-accel") + 1] == "tcg,thread=multi"
    # --accel kvm over a scenario's aarch64 cells is refused, not shown as KVM.
    assert main(["run", "--dry-run", "--accel", "kvm", str(path)]) == 2
    assert "KVM runs only guests of the host's architecture, x86_64" in capsys.readouterr().err


def test_the_tweaked_edu_runs_on_the_lab_s_aarch64_qemu(capsys, tmp_path, x86_host) -> None:
    text = (
        "machine: {arch: aarch64, qemu: lab}\n"
        "devices: [{type: edu, bar: {size: 1G}, dma_delay: 10us}]\n"
    )
    assert main(["run", "--dry-run", str(write(tmp_path, text))]) == 0
    out = capsys.readouterr().out
    assert "# qemu: lab: the lab's build of qemu 1:10.0.13" in out
    (line,) = [line for line in out.splitlines() if not line.startswith("#")]
    argv = shlex.split(line)
    assert argv[0] == "<lab qemu>" and "virt,gic-version=3,iommu=smmuv3" in argv
    edu = "edu,bus=rp0,dma_mask=0xffffffffffffffff,ram-bar-size=0x40000000,ram-bar-index=1"
    assert f"{edu},dma-delay-ns=10000" in argv
    assert "-global" not in argv  # virt's 512 GiB window holds the BAR


# -- the scenario: the axis and its rules ------------------------------------------------


def test_arch_is_an_axis_with_each_arch_s_own_model(tmp_path) -> None:
    s = scenario.load(
        write(tmp_path, "kernels: [debian:7.2]\nmachine: {arch: [x86_64, aarch64]}\n")
    )
    cells = scenario.expand(s)
    assert [(c.name, c.arch, c.iommu) for c in cells] == [
        ("7.2-x86_64", "x86_64", "intel-iommu"),
        ("7.2-aarch64", "aarch64", "smmuv3"),
    ]
    # The model's kernel options join the aarch64 cell's requested config.
    assert cells[1].config.overrides == (("ARM_SMMU_V3", "y"), ("ARM_GIC_V3_ITS", "y"))
    assert cells[0].config.overrides == ()


def test_listed_models_go_to_the_arches_that_offer_them(tmp_path) -> None:
    text = (
        "kernels: [debian:7.2]\nconfig: {IOMMUFD_VFIO_CONTAINER: [y, n]}\n"
        "machine:\n  arch: [x86_64, aarch64]\n  iommu: [intel-iommu, virtio-iommu, smmuv3]\n"
    )
    names = [c.name for c in scenario.expand(scenario.load(write(tmp_path, text)))]
    assert names == [
        "7.2-iommufd_vfio_container=y-x86_64-intel-iommu",
        "7.2-iommufd_vfio_container=y-x86_64-virtio-iommu",
        "7.2-iommufd_vfio_container=y-aarch64-smmuv3",
        "7.2-iommufd_vfio_container=n-x86_64-intel-iommu",
        "7.2-iommufd_vfio_container=n-x86_64-virtio-iommu",
        "7.2-iommufd_vfio_container=n-aarch64-smmuv3",
    ]


def test_one_arch_keeps_the_names_cells_had(tmp_path) -> None:
    s = scenario.load(write(tmp_path, "machine: {arch: aarch64}\n"))
    assert [(c.name, c.iommu) for c in scenario.expand(s)] == [("debian-stock", "smmuv3")]


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("machine: {arch: arm64}\n", "machine.arch", "unknown architecture 'arm64'; available: aarch64, x86_64"),
        ("machine: {arch: [x86_64, riscv64]}\n", "machine.arch[1]", "available: aarch64, x86_64"),
        ("machine: {arch: [aarch64, aarch64]}\n", "machine.arch", "an arch is listed twice"),
        ("machine: {iommu: smmuv3}\n", "machine.iommu", "smmuv3 is offered on aarch64 only, and machine.arch is x86_64"),
        ("machine: {arch: aarch64, iommu: [smmuv3, intel-iommu]}\n", "machine.iommu[1]", "intel-iommu is offered on x86_64 only"),
        ("machine: {arch: [x86_64, aarch64], iommu: intel-iommu}\n", "machine.arch[1]", "no model of machine.iommu is offered on aarch64 (it has smmuv3)"),
        ("accel: kvm\nmachine: {arch: aarch64}\n", "accel", "KVM runs only guests of the host's architecture (x86_64)"),
    ],
)  # fmt: skip
def test_arch_rules_name_file_line_and_field(tmp_path, x86_host, text, field, words) -> None:
    e = error_of(write(tmp_path, text))
    assert e.field == field and words in e.message, e
    assert e.line is not None and e.exit_code == 2


def test_a_kernel_entry_may_name_any_arch_s_model(tmp_path) -> None:
    text = "kernels: [{source: debian:7.2, iommu: [smmuv3]}]\nmachine: {arch: [x86_64, aarch64]}\n"
    cells = scenario.expand(scenario.load(write(tmp_path, text)))
    assert [c.name for c in cells] == ["7.2-aarch64"]


# -- the accelerator -----------------------------------------------------------------------


def test_a_foreign_arch_runs_under_tcg_without_a_probe(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(accel, "_probe_once", pytest.fail)
    choice = accel.choose(
        "auto", ARM, "qemu-system-aarch64", tmp_path / "k", "d", Cache(tmp_path), "x86_64"
    )
    assert (
        choice.accel == "tcg" and "KVM runs only guests of the host's architecture" in choice.reason
    )
    with pytest.raises(UsageError, match="--accel kvm was requested, but KVM runs only"):
        accel.choose(
            "kvm", ARM, "qemu-system-aarch64", tmp_path / "k", "d", Cache(tmp_path), "x86_64"
        )
    assert accel.foreign_choice("auto", X86, "x86_64") is None  # its own arch: probed
    assert accel.foreign_choice("auto", ARM, "aarch64") is None


def test_the_run_records_one_accelerator_per_arch(tmp_path) -> None:
    from lab.model.shards import WHOLE, plan
    from lab.run.matrix import RunOptions, ScenarioRun

    s = scenario.load(write(tmp_path, "machine: {arch: [x86_64, aarch64]}\n"))
    run = ScenarioRun(s, RunOptions(tmp_path / "results"), Cache(tmp_path / "c"))
    results = run.start(plan(scenario.expand(s), WHOLE))
    run._on_accel("x86_64", accel.AccelChoice("kvm", "KVM booted the guest kernel"))
    assert (results.data["accelerator"], results.data["accelerator_reason"]) == (
        "kvm",
        "KVM booted the guest kernel",
    )
    run._on_accel("aarch64", accel.AccelChoice("tcg", "foreign"))
    assert results.data["accelerator"] == "kvm,tcg"
    assert (
        results.data["accelerator_reason"]
        == "x86_64: KVM booted the guest kernel; aarch64: foreign"
    )


# -- kernels: cross kbuild, fragments, requirements ----------------------------------------


def test_kbuild_of_aarch64_is_cross_on_an_x86_64_host_only() -> None:
    assert ARM.kbuild_args("x86_64") == ["ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"]
    assert ARM.kbuild_args("aarch64") == []
    assert X86.kbuild_args("x86_64") == []
    assert X86.kbuild_args("aarch64") == ["ARCH=x86", "CROSS_COMPILE=x86_64-linux-gnu-"]


def compiled(monkeypatch, tmp_path: Path, arch) -> list[list[str]]:
    ran: list[list[str]] = []
    monkeypatch.setattr(kbuild, "run_logged", lambda argv, **kw: ran.append([str(a) for a in argv]))
    monkeypatch.setattr(
        kbuild, "capture", lambda argv, **kw: ran.append([str(a) for a in argv]) or "7.2.13\n"
    )
    tree = SourceTree("linux-source-7.2=7.2.13-1", tmp_path / "linux", owned=True)
    built = compile_kernel(
        tree, tmp_path / "b", arch, Cache(tmp_path / "c"), tmp_path / "log", print
    )
    return [*ran, [str(built.image)]]


def test_compile_kernel_cross_builds_arm64_s_image(monkeypatch, tmp_path, x86_host) -> None:
    make, release, image = compiled(monkeypatch, tmp_path, ARM)
    assert make[:6] == ["make", "-C", str(tmp_path / "linux"), f"O={tmp_path / 'b'}",
                        "ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"]  # fmt: skip
    assert make[-2:] == ["CC=ccache aarch64-linux-gnu-gcc", "Image"]
    assert release[4:6] == ["ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"]
    assert release[-2:] == ["-s", "kernelrelease"]
    assert image == [str(tmp_path / "b" / "arch" / "arm64" / "boot" / "Image")]


def test_compile_kernel_builds_x86_as_it_always_did(monkeypatch, tmp_path, x86_host) -> None:
    make, _, image = compiled(monkeypatch, tmp_path, X86)
    assert make[:4] == ["make", "-C", str(tmp_path / "linux"), f"O={tmp_path / 'b'}"]
    assert make[5:] == ["CC=ccache gcc", "bzImage"] and not any("ARCH" in w for w in make)
    assert image == [str(tmp_path / "b" / "arch" / "x86" / "boot" / "bzImage")]


def test_a_missing_cross_compiler_says_which_package(monkeypatch) -> None:
    kbuild.compiler_identity.cache_clear()
    monkeypatch.setattr(kbuild.shutil, "which", lambda name: None)
    with pytest.raises(MissingPrerequisite, match="apt-get install gcc-aarch64-linux-gnu"):
        kbuild.compiler_identity("aarch64-linux-gnu-")
    kbuild.compiler_identity.cache_clear()


def test_fragment_lines_marked_for_an_arch_are_that_arch_s_only(tmp_path) -> None:
    frag = tmp_path / "f.config"
    frag.write_text("CONFIG_A=y\n[aarch64] CONFIG_B=y\n[x86_64, aarch64] # CONFIG_C is not set\n")
    assert fragment_values(frag, "x86_64") == {"CONFIG_A": "y", "CONFIG_C": "n"}
    assert fragment_values(frag, "aarch64") == {"CONFIG_A": "y", "CONFIG_B": "y", "CONFIG_C": "n"}
    frag.write_text("CONFIG_A=y\n[arm64] CONFIG_B=y\n")
    with pytest.raises(UsageError, match=r"f.config:2: unknown architecture 'arm64'"):
        fragment_values(frag, "aarch64")


def test_the_shipped_fragments_ask_each_arch_for_its_own() -> None:
    for name in ARCHES:  # every mark in every shipped fragment names a known arch
        requested(available_fragments(), {}, name)
    x86 = requested(["debug"], {}, "x86_64")
    arm64 = requested(["debug"], {}, "aarch64")
    assert x86["CONFIG_PVH"] == x86["CONFIG_INTEL_IOMMU"] == "y"
    assert "CONFIG_SERIAL_AMBA_PL011" not in x86 and "CONFIG_COMPILE_TEST" not in x86
    assert "CONFIG_PVH" not in arm64 and "CONFIG_INTEL_IOMMU" not in arm64
    assert arm64["CONFIG_SERIAL_AMBA_PL011_CONSOLE"] == arm64["CONFIG_PCI_HOST_GENERIC"] == "y"
    # 7.2's IOMMUFD_TEST needs the AMD v1 page table, offered on arm64 with COMPILE_TEST.
    assert arm64["CONFIG_COMPILE_TEST"] == arm64["CONFIG_IOMMUFD_TEST"] == "y"


def test_a_stock_kernel_without_the_smmuv3_or_the_its_is_refused(tmp_path) -> None:
    s = scenario.load(write(tmp_path, "machine: {arch: aarch64}\n"))
    (cell,) = scenario.expand(s)
    config_file = tmp_path / "config"
    kernel = kernels.KernelArtifact("debian-stock", "6.1", "linux-image-6.1.0-50-arm64=1",
                                    tmp_path / "vmlinuz", tmp_path / "i", "x")  # fmt: skip
    config_file.write_text("CONFIG_ARM_SMMU_V3=y\n# CONFIG_ARM_GIC_V3_ITS is not set\n")
    with pytest.raises(
        ScenarioError, match="smmuv3 needs CONFIG_ARM_GIC_V3_ITS, which linux-image"
    ):
        booter._check_model(cell, kernel)
    config_file.write_text("CONFIG_ARM_SMMU_V3=y\nCONFIG_ARM_GIC_V3_ITS=y\n")  # Debian's 6.1
    booter._check_model(cell, kernel)
    assert model_modules("aarch64") == []  # built into Debian's arm64 6.1
    assert model_modules("x86_64") == ["virtio_iommu"]


# -- debian-stock for arm64 through the private apt setup ----------------------------------


def test_the_arm64_apt_setup_is_private_and_lists_arm64(tmp_path) -> None:
    private = apt.PrivateApt(Cache(tmp_path), mirror="http://m/debian", foreign="arm64")
    options = private.options()
    assert options[-2:] == ["-o", "APT::Architectures::=arm64"]
    assert private.root == tmp_path / "apt-arm64"
    assert private.qualified("linux-image-arm64") == "linux-image-arm64:arm64"
    native = apt.PrivateApt(Cache(tmp_path), mirror="http://m/debian")
    assert not any("Architectures" in o for o in native.options()) and native.root.name == "apt"
    assert native.state() != private.state()


def test_an_arm64_image_is_resolved_with_the_private_options(monkeypatch) -> None:
    asked: list[list[str]] = []
    answers = {
        "policy linux-image-arm64": "linux-image-arm64:arm64:\n  Candidate: 6.1.176-1\n",
        "depends linux-image-arm64=6.1.176-1": "linux-image-arm64:arm64\n  Depends: linux-image-6.1.0-50-arm64:arm64\n",
        "policy linux-image-6.1.0-50-arm64": "  Candidate: 6.1.176-1\n",
        "depends linux-image-6.1.0-50-arm64=6.1.176-1": "  Depends: kmod:arm64\n",
    }  # fmt: skip

    def apt_cache(argv: list[str], **kw: object) -> str:
        asked.append(argv)
        return answers[" ".join(argv[-2:])]

    monkeypatch.setattr(kernels, "capture", apt_cache)
    options = ["-o", "APT::Architectures::=arm64"]
    found = kernels.resolve_debian_image("linux-image-arm64", options)
    assert found == ("linux-image-6.1.0-50-arm64", "6.1.176-1")
    assert all(argv[1:3] == options for argv in asked)


def test_debian_stock_defaults_to_the_arch_s_image_package(tmp_path, monkeypatch, x86_host) -> None:
    seen: list[tuple[str, object]] = []
    monkeypatch.setattr(kernels, "resolved_image", lambda p, c, a: seen.append((p, a)) or (p, "1"))
    monkeypatch.setattr(kernels.PrivateApt, "update", lambda self, progress: None)
    spec = kernels.KernelSpec("debian-stock", "")
    stock = kernels.DebianStock()
    assert stock.resolved(spec, X86, Cache(tmp_path)) == "linux-image-amd64=1"
    assert stock.resolved(spec, ARM, Cache(tmp_path)) == "linux-image-arm64=1"
    assert seen[0][1] is None  # the host's apt for its own arch
    private = seen[1][1]
    assert isinstance(private, apt.PrivateApt) and private.foreign == "arm64"


# -- the arch in every cache key -------------------------------------------------------------


def test_every_cache_key_differs_by_arch_and_x86_s_are_as_before(
    tmp_path, monkeypatch, x86_host
) -> None:
    monkeypatch.setattr(kbuild, "compiler_identity", lambda cross="": f"{cross}gcc 12")
    tree = SourceTree("linux-source-7.2=7.2.13-1", tmp_path, owned=True)
    host = HostBusybox()
    arm64 = PackagedBusybox(apt.PrivateApt(Cache(tmp_path), "http://m", "arm64"), "1:1.35.0-4")
    assert build_key(tree, "ab", X86, host) != build_key(tree, "ab", ARM, arm64)
    assert build_dir_path(tree, "CONFIG_A=y\n", X86) != build_dir_path(tree, "CONFIG_A=y\n", ARM)
    keys = LabKeys(tmp_path / "c", tmp_path / "h")
    for key in (keys.client_pub, keys.host_pub):
        key.write_text("ssh-ed25519 AAAA vfio-lab\n")
    assert rootfs.rootfs_key(keys, X86) != rootfs.rootfs_key(keys, ARM)
    image = "linux-image-6.1.0-50-arm64"
    assert kernels.stock_key(image, "1", X86, host) != kernels.stock_key(image, "1", ARM, arm64)
    # The x86_64 keys are those of before aarch64 guests had a userspace, part for part.
    initramfs = tree_digest(kernels.INITRAMFS_RECIPE)
    assert build_key(tree, "ab", X86, host) == content_key(
        ["source-build", tree.identity, "ab", "gcc 12", initramfs]
    )
    assert kernels.stock_key(image, "1", X86, host) == content_key(
        ["debian-stock", image, "1", initramfs, "virtio_iommu"]
    )
    pub = keys.host_pub.read_text()
    assert rootfs.rootfs_key(keys, X86) == content_key(
        [rootfs.BUILDER, "bookworm", "2G", tree_digest(rootfs.RECIPE), pub, pub]
    )
    monkeypatch.setattr(selftests, "compiler_identity", lambda cross="": f"{cross}gcc 12")
    suite = SUITES["kselftest-vfio"]
    sysroot = Sysroot(tmp_path, "aarch64-linux-gnu", "s")
    native, cross = Target(X86, "x86_64", None), Target(ARM, "x86_64", sysroot)
    assert selftests.selftests_key(suite, tree, [], native) != selftests.selftests_key(
        suite, tree, [], cross
    )
    p = prepared(tmp_path)
    (x86_cell,) = scenario.expand(scenario.load(write(tmp_path, "description: x\n")))
    arm_cell = dataclasses.replace(x86_cell, arch="aarch64", iommu="smmuv3")
    assert snapshot_key(x86_cell, p, True) != snapshot_key(arm_cell, p, True)
    # x86_64 adds nothing: the keys of everything built before arches existed stay valid.
    assert X86.key() == [] and ARM.key() == ["aarch64"]
    # The lab's QEMU is one build per arch, named by its target (test_qemu_build.py).
    monkeypatch.setattr("lab.artifacts.qemu.compiler_identity", lambda: "gcc 12")
    assert qemu_identity("lab", X86) != qemu_identity("lab", ARM)


# -- an aarch64 cell goes to its work as an x86_64 one does ---------------------------------


class Reached(Exception):
    """Where a test stops the lab: it got that far."""


def test_the_booter_builds_an_aarch64_cell_s_root_filesystem(
    tmp_path, monkeypatch, x86_host
) -> None:
    # No longer refused: its second stage has run for real (tests/integration/test_foreign_rootfs.py).
    path = write(
        tmp_path, "machine: {arch: [x86_64, aarch64]}\npayload: {suites: [lab, kselftest-vfio]}\n"
    )
    _, arm_cell = scenario.expand(scenario.load(path))
    built = []

    def ensure_rootfs(cache, keys, arch, first_boot, progress):
        built.append(arch.name)
        raise Reached

    monkeypatch.setattr(booter, "ensure_keys", lambda cache: "keys")
    monkeypatch.setattr(booter.rootfs, "ensure_rootfs", ensure_rootfs)
    with pytest.raises(Reached):
        booter.CellBooter(Cache(tmp_path / "c")).prepare(arm_cell)
    assert built == ["aarch64"]


def test_run_takes_an_aarch64_cell_on_to_the_host_s_qemu(
    capsys, tmp_path, monkeypatch, x86_host
) -> None:
    monkeypatch.setenv("VFIO_LAB_CACHE", str(tmp_path / "cache"))
    asked = []

    def require_qemu(choice, arches, cache):
        asked.append(arches)
        raise MissingPrerequisite("qemu-system-aarch64", "scripts/setup-host.sh --arm64")

    monkeypatch.setattr("lab.cli.common.doctor.require_qemu", require_qemu)
    path = write(tmp_path, "machine: {arch: [x86_64, aarch64]}\n")
    assert main(["run", "--results", str(tmp_path / "results"), str(path)]) == 3
    assert asked == [["x86_64", "aarch64"]]
    assert "qemu-system-aarch64 is missing" in capsys.readouterr().err


def test_the_registry_names_its_choices() -> None:
    with pytest.raises(
        UnknownVariant, match="unknown architecture 'arm64'; available: aarch64, x86_64"
    ):
        ARCHES["arm64"]
    assert ARM.qemu_system == "qemu-system-aarch64" and X86.qemu_system == "qemu-system-x86_64"
    assert (ARM.debian, ARM.console, ARM.image_path) == (
        "arm64",
        "ttyAMA0",
        "arch/arm64/boot/Image",
    )


def test_x86_under_tcg_hides_the_byte_string_ops_and_kvm_passes_the_host_through() -> None:
    """TCG runs `rep stosb`/`rep movsb` a byte per step; without ERMS and FSRM the guest's
    kernel and libc use `rep stosq`. Under KVM the host's CPU is the guest's, untouched."""
    x86 = ARCHES["x86_64"]
    assert x86.cpu("tcg").split(",") == ["max", "-erms", "-fsrm"]
    assert x86.cpu("kvm") == "host"
