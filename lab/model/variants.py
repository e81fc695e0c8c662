"""The variants a machine is built from: accelerators, IOMMU models and PCI devices.

Each variant is a small class returning its argv pieces; the registries at the
bottom are the one place that lists which exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from lab.core.registry import Registry

Accel = Literal["kvm", "tcg"]


def qemu_escape(value: str) -> str:
    """QEMU option values use ',' as separator; a literal comma is written ',,'."""
    return value.replace(",", ",,")


class IommuModel:
    name: ClassVar[str]
    doc: ClassVar[str]
    # Kernel options a source-built kernel needs for the model, beyond base.config: added
    # to the cell's requested config (and verified by the merge like any other).
    kconfig: ClassVar[tuple[tuple[str, str], ...]] = ()
    # Modules a modular (Debian) kernel must load for the model before virtio's devices
    # bind: the lab's initramfs carries them.
    modules: ClassVar[tuple[str, ...]] = ()
    # The guest architectures (machine.arch) it is offered on.
    arches: ClassVar[tuple[str, ...]] = ("x86_64",)
    # A regex for the line its driver logs on a DMA fault (no capturing groups): triage
    # shows such lines with the test they happened in.
    fault_log: ClassVar[str]

    def machine_options(self, accel: Accel) -> list[str]:
        return []

    def device_argv(self) -> list[str]:
        return []

    def kernel_cmdline(self) -> list[str]:
        return []


class IntelIommu(IommuModel):
    name = "intel-iommu"
    doc = "emulated VT-d with interrupt remapping and caching mode (what vfio needs)"
    # base.config has INTEL_IOMMU (and its debugfs, for reading IOPTEs).
    fault_log = r"DMAR: \[DMA .*"

    def machine_options(self, accel: Accel) -> list[str]:
        # With KVM the in-kernel IOAPIC cannot be remapped; QEMU insists on a split irqchip.
        return ["kernel-irqchip=split"] if accel == "kvm" else []

    def device_argv(self) -> list[str]:
        return ["-device", "intel-iommu,intremap=on,caching-mode=on"]

    def kernel_cmdline(self) -> list[str]:
        # Debian kernels do not turn VT-d on by default.
        return ["intel_iommu=on"]


class VirtioIommu(IommuModel):
    name = "virtio-iommu"
    doc = "paravirtual virtio-iommu-pci (4 KiB pages only: no superpages, no IOPTE reading)"
    kconfig = (("VIRTIO_IOMMU", "y"),)
    modules = ("virtio_iommu",)
    # viommu_fault_handler: "virtio_iommu virtio0: page fault from EP 8 at 0x1000 [W]"
    fault_log = r"virtio_iommu.*fault.*"
    # x86_64 only: not tried behind aarch64's virt yet.

    def device_argv(self) -> list[str]:
        return ["-device", "virtio-iommu-pci"]

    def kernel_cmdline(self) -> list[str]:
        # virtio-iommu remaps no MSI on x86: VFIO (type1, and iommufd) refuses a container
        # with EPERM unless told that unsafe interrupts are acceptable, as they are in a
        # throwaway test guest.
        return ["vfio_iommu_type1.allow_unsafe_interrupts=1", "iommufd.allow_unsafe_interrupts=1"]


class SmmuV3(IommuModel):
    name = "smmuv3"
    doc = (
        "Arm's SMMUv3 of QEMU's virt machine (aarch64): stage 1 on Debian's QEMU 7.2, "
        "stage 1 and 2 (nested) on the lab's 10.0; MSIs isolated by the GICv3 ITS; "
        "reserves a 1 MiB MSI window at IOVA 0x8000000"
    )
    # The ITS has no prompt (it follows GICv3, which arm64 selects): listed so the merge is
    # verified to reach it, and a prebuilt kernel is refused without it.
    kconfig = (("ARM_SMMU_V3", "y"), ("ARM_GIC_V3_ITS", "y"))
    arches = ("aarch64",)
    # drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.c logs an event it does not handle as
    # "event 0x10 received:" and its raw words (dev_info in 6.1's arm_smmu_evtq_thread,
    # dev_err in newer kernels' arm_smmu_dump_raw_event, which then decodes it:
    # "event: F_TRANSLATION client: 0000:00:01.0 sid: 0x8 ssid: 0x0 iova: ..."). The
    # device is "9050000.smmuv3" on virt's device tree.
    fault_log = r"arm-smmu-v3 \S+: event(?: 0x[0-9a-f]+ received:|: \S+ client: ).*"

    def machine_options(self, accel: Accel) -> list[str]:
        return ["iommu=smmuv3"]


def model_modules(arch: str) -> list[str]:
    """The modules of every model offered on `arch`, in registry order: what a modular
    kernel's initramfs for that arch carries."""
    models = [IOMMU_MODELS[name] for name in IOMMU_MODELS]
    return [m for model in models if arch in model.arches for m in model.modules]


@dataclass(frozen=True)
class PciId:
    vendor: int
    device: int

    def __str__(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"


@dataclass(frozen=True)
class DeviceConfig:
    """One PCI device as the QEMU argv needs it."""

    type: str
    dma_mask: int = (1 << 64) - 1
    ram_bar_size: int = 0  # a RAM-backed BAR of this size (edu's tweak, ivshmem's memory)
    ram_bar_index: int = 1
    dma_delay_ns: int | None = None  # edu's DMA completion delay; None: the device's own


class PciDevice:
    name: ClassVar[str]
    doc: ClassVar[str]
    pci_id: ClassVar[PciId]
    ram_bar: ClassVar[bool] = False  # whether `bar` may size a RAM-backed BAR of it
    ram_bar_required: ClassVar[bool] = False  # whether it has no size of its own
    fixed_bar_index: ClassVar[int | None] = None  # where its RAM BAR always is
    lab_qemu_only: ClassVar[bool] = False  # Debian's QEMU 7.2 does not have it
    # The longest DMA completion delay the lab's QEMU lets it set; None: none can be set.
    dma_delay_max_ns: ClassVar[int | None] = None

    def device_argv(self, dev: DeviceConfig, index: int) -> list[str]:
        """The device's argv; `index` is its position in the scenario's device list."""
        raise NotImplementedError


def root_port_argv(index: int) -> tuple[str, list[str]]:
    """A PCIe root port of its own for device `index`: (the bus to put the device on, argv).
    Alone below a port, a device without FLR can still be reset (a secondary bus reset),
    which is the reset vfio-pci offers for it."""
    port = f"rp{index}"
    return port, ["-device", f"pcie-root-port,id={port},chassis={index + 1}"]


class Edu(PciDevice):
    name = "edu"
    doc = (
        "QEMU's educational device: 1 MiB BAR0, a 4 KiB DMA engine, INTx and MSI; "
        "behind a PCIe root port of its own, so it can be reset"
    )
    pci_id = PciId(0x1234, 0x11E8)
    ram_bar = True
    dma_delay_max_ns = 3600 * 10**9  # images/qemu/patches/0003: an hour

    def device_argv(self, dev: DeviceConfig, index: int) -> list[str]:
        bus, port = root_port_argv(index)
        props = f"edu,bus={bus},dma_mask={dev.dma_mask:#x}"
        if dev.ram_bar_size:
            props += f",ram-bar-size={dev.ram_bar_size:#x},ram-bar-index={dev.ram_bar_index}"
        if dev.dma_delay_ns is not None:
            props += f",dma-delay-ns={dev.dma_delay_ns}"
        return [*port, "-device", props]


class Ivshmem(PciDevice):
    name = "ivshmem"
    doc = (
        "QEMU's ivshmem-plain: BAR2 is RAM, 64-bit prefetchable, sized by bar.size; "
        "a large-BAR device that Debian's QEMU has too"
    )
    pci_id = PciId(0x1AF4, 0x1110)
    ram_bar = True
    ram_bar_required = True
    fixed_bar_index = 2

    def device_argv(self, dev: DeviceConfig, index: int) -> list[str]:
        bus, port = root_port_argv(index)
        mem = f"ivshmem{index}"
        return [
            "-object", f"memory-backend-ram,id={mem},size={dev.ram_bar_size}",
            *port,
            "-device", f"ivshmem-plain,memdev={mem},bus={bus}",
        ]  # fmt: skip


class Igb(PciDevice):
    name = "igb"
    doc = "Intel 82576 (igb): SR-IOV, MSI-X; emulated since QEMU 8.0 (machine.qemu: lab)"
    pci_id = PciId(0x8086, 0x10C9)
    lab_qemu_only = True

    def device_argv(self, dev: DeviceConfig, index: int) -> list[str]:
        bus, port = root_port_argv(index)
        return [*port, "-device", f"igb,bus={bus}"]


class AccelModel:
    name: ClassVar[Accel]

    def argv(self) -> list[str]:
        raise NotImplementedError


class Tcg(AccelModel):
    name = "tcg"

    def argv(self) -> list[str]:
        return ["-accel", "tcg,thread=multi"]


class Kvm(AccelModel):
    name = "kvm"

    def argv(self) -> list[str]:
        return ["-accel", "kvm"]


IOMMU_MODELS: Registry[IommuModel] = Registry(
    "IOMMU model", {m.name: m() for m in (IntelIommu, VirtioIommu, SmmuV3)}
)
DEVICES: Registry[PciDevice] = Registry("device", {d.name: d() for d in (Edu, Ivshmem, Igb)})
ACCELS: Registry[AccelModel] = Registry("accelerator", {a.name: a() for a in (Tcg, Kvm)})
