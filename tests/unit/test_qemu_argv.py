from __future__ import annotations

import json
from pathlib import Path

from lab.model.variants import DeviceConfig, qemu_escape
from lab.vm.qemu import VMConfig, build_argv, kernel_cmdline


def config(**overrides) -> VMConfig:
    base = dict(
        name="vfio-lab:debian-stock",
        accel="tcg",
        kernel=Path("/cache/kernels/k/vmlinuz"),
        initrd=Path("/cache/kernels/k/initramfs.cpio"),
        disk=Path("/cache/tmp/vm-1/overlay.qcow2"),
        console_log=Path("/results/r/debian-stock/console.log"),
        qmp_socket=Path("/cache/tmp/vm-1/qmp.sock"),
        ssh_port=10022,
        memory_mib=4096,
        cpus=2,
        hugepages=(("1G", 1), ("2M", 32)),
        extra_cmdline=("mitigations=off",),
    )
    base.update(overrides)
    return VMConfig(**base)


def test_tcg_argv_matches_golden(golden):
    golden("argv-tcg-intel-iommu-edu.json", json.dumps(build_argv(config()), indent=2) + "\n")


def test_kvm_uses_split_irqchip_for_intel_iommu():
    argv = build_argv(config(accel="kvm"))
    assert argv[argv.index("-machine") + 1] == "q35,kernel-irqchip=split"
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-cpu") + 1] == "host"


def test_kvm_without_intel_iommu_keeps_default_irqchip():
    argv = build_argv(config(accel="kvm", iommu="virtio-iommu"))
    assert argv[argv.index("-machine") + 1] == "q35"
    assert "virtio-iommu-pci" in argv


def test_commas_in_paths_are_doubled():
    argv = build_argv(config(disk=Path("/tmp/a,b/overlay.qcow2")))
    drive = argv[argv.index("-drive") + 1]
    assert drive.startswith("file=/tmp/a,,b/overlay.qcow2,format=qcow2")
    assert qemu_escape("x,y,,z") == "x,,y,,,,z"


def test_edu_dma_mask_and_device_order():
    argv = build_argv(config(devices=(DeviceConfig("edu", 0xFFFFFFF), DeviceConfig("edu"))))
    # Each edu alone behind a root port of its own: resettable by a secondary bus reset.
    assert argv[-8:] == [
        "-device", "pcie-root-port,id=rp0,chassis=1",
        "-device", "edu,bus=rp0,dma_mask=0xfffffff",
        "-device", "pcie-root-port,id=rp1,chassis=2",
        "-device", "edu,bus=rp1,dma_mask=0xffffffffffffffff",
    ]  # fmt: skip
    # intel-iommu must come before the devices it translates for
    assert argv.index("intel-iommu,intremap=on,caching-mode=on") < argv.index(
        "edu,bus=rp0,dma_mask=0xfffffff"
    )


def test_kernel_cmdline_has_iommu_and_hugepages():
    line = kernel_cmdline(config())
    assert "intel_iommu=on" in line.split()
    assert "hugepagesz=1G hugepages=1 hugepagesz=2M hugepages=32" in line
    assert line.endswith("mitigations=off")
    assert "intel_iommu=on" not in kernel_cmdline(config(iommu="virtio-iommu"))


def test_each_iommu_model_gives_its_device():
    virtio = build_argv(config(iommu="virtio-iommu"))
    assert "virtio-iommu-pci" in virtio and "intel-iommu" not in " ".join(virtio)
    # No MSI remapping behind virtio-iommu: VFIO sets up no container without this.
    words = kernel_cmdline(config(iommu="virtio-iommu")).split()
    assert "vfio_iommu_type1.allow_unsafe_interrupts=1" in words
    assert "iommufd.allow_unsafe_interrupts=1" in words


def test_matrix_cell_names_survive_qemu_option_parsing():
    # A bare first value would be split at '=' by QEMU's option parser: name it explicitly.
    argv = build_argv(config(name="vfio-lab:7.2-iommufd_vfio_container=y,odd"))
    assert (
        argv[argv.index("-name") + 1]
        == "guest=vfio-lab:7.2-iommufd_vfio_container=y,,odd,process=vfio-lab"
    )


def test_ivshmem_and_igb_each_behind_their_own_root_port():
    devices = (
        DeviceConfig("edu"),
        DeviceConfig("ivshmem", ram_bar_size=64 << 20, ram_bar_index=2),
        DeviceConfig("igb"),
    )
    argv = build_argv(config(devices=devices))
    assert argv[-12:] == [
        "-device", "edu,bus=rp0,dma_mask=0xffffffffffffffff",
        "-object", "memory-backend-ram,id=ivshmem1,size=67108864",
        "-device", "pcie-root-port,id=rp1,chassis=2",
        "-device", "ivshmem-plain,memdev=ivshmem1,bus=rp1",
        "-device", "pcie-root-port,id=rp2,chassis=3",
        "-device", "igb,bus=rp2",
    ]  # fmt: skip


def test_edu_dma_delay_becomes_its_property_and_only_when_set():
    devices = (
        DeviceConfig("edu", dma_delay_ns=10_000),
        DeviceConfig("edu", ram_bar_size=1 << 30, ram_bar_index=2, dma_delay_ns=0),
        DeviceConfig("edu"),
    )
    argv = build_argv(config(devices=devices))
    assert argv[-12:] == [
        "-device", "pcie-root-port,id=rp0,chassis=1",
        "-device", "edu,bus=rp0,dma_mask=0xffffffffffffffff,dma-delay-ns=10000",
        "-device", "pcie-root-port,id=rp1,chassis=2",
        "-device", "edu,bus=rp1,dma_mask=0xffffffffffffffff,ram-bar-size=0x40000000,"
        "ram-bar-index=2,dma-delay-ns=0",
        "-device", "pcie-root-port,id=rp2,chassis=3",
        "-device", "edu,bus=rp2,dma_mask=0xffffffffffffffff",
    ]  # fmt: skip


def test_the_golden_argv_of_a_short_dma_delay(golden):
    cfg = config(qemu="<lab qemu>", devices=(DeviceConfig("edu", dma_delay_ns=10_000),))
    golden("argv-tcg-intel-iommu-edu-dma-delay.json", json.dumps(build_argv(cfg), indent=2) + "\n")
