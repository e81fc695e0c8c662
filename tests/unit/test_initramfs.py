from __future__ import annotations

import pytest

from lab.artifacts.busybox import HostBusybox
from lab.artifacts.initramfs import module_closure, module_name, parse_modules_dep, read_module_list
from lab.core.errors import BuildError

DEP = """\
kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko kernel/drivers/vfio/vfio.ko
kernel/drivers/vfio/pci/vfio-pci-core.ko: kernel/drivers/vfio/vfio.ko kernel/virt/lib/irqbypass.ko
kernel/drivers/vfio/vfio.ko:
kernel/virt/lib/irqbypass.ko:
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
"""


def test_module_name_is_canonical():
    assert module_name("kernel/drivers/vfio/pci/vfio-pci.ko") == "vfio_pci"
    assert module_name("kernel/x/zstd-mod.ko.xz") == "zstd_mod"


def test_closure_follows_dependencies_and_skips_builtins():
    deps = parse_modules_dep(DEP)
    paths = module_closure(["vfio-pci", "virtio_blk"], deps)  # virtio_blk: built in here
    assert paths == sorted(
        [
            "kernel/drivers/vfio/pci/vfio-pci.ko",
            "kernel/drivers/vfio/pci/vfio-pci-core.ko",
            "kernel/drivers/vfio/vfio.ko",
            "kernel/virt/lib/irqbypass.ko",
        ]
    )


def test_module_list_recipe(tmp_path):
    path = tmp_path / "modules.txt"
    path.write_text("# comment\nboot virtio_blk\n\npayload vfio_pci  # trailing\n")
    mods = read_module_list(path)
    assert (mods.boot, mods.payload) == (["virtio_blk"], ["vfio_pci"])
    path.write_text("early virtio_blk\n")
    with pytest.raises(BuildError, match=r"modules.txt:1"):
        read_module_list(path)


def test_builtin_kernel_initramfs_has_no_modules(tmp_path):
    import subprocess

    from lab.artifacts.kbuild import build_initramfs_builtin

    out = tmp_path / "initramfs.cpio"
    build_initramfs_builtin("7.2.13-vfio-lab", out, tmp_path / "log", HostBusybox().provide())
    with out.open("rb") as f:
        names = subprocess.run(
            ["cpio", "-t", "--quiet"], stdin=f, capture_output=True, text=True, check=True
        )
    listed = names.stdout.split()
    assert {"init", "bin/busybox", "etc/lab-modules", "lib/modules/7.2.13-vfio-lab"} <= set(listed)
    assert not [n for n in listed if n.endswith(".ko")]


def test_iommu_modules_load_right_after_the_virtio_bus():
    from lab.artifacts.initramfs import load_order

    boot = [line.split()[1] for line in load_order(["virtio_iommu"]).splitlines()
            if line.startswith("boot ")]  # fmt: skip
    assert boot[:3] == ["virtio_pci", "virtio_iommu", "virtio_blk"]
    assert "virtio_iommu" not in load_order([])
