"""The QEMU command line as a pure function of a typed machine configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.model.arches import ARCHES, DEFAULT_ARCH
from lab.model.variants import ACCELS, DEVICES, IOMMU_MODELS, Accel, DeviceConfig, qemu_escape

# A log buffer that outlasts the payload: triage reads dmesg once, at the end, and loses
# the per-test markers of whatever the default 128 KiB ring has overwritten (the
# iommufd selftests' fault injection alone prints megabytes).
BASE_CMDLINE = ("root=/dev/vda", "rw", "panic=-1", "log_buf_len=16M")
HOLE64_DEFAULT = 32 << 30  # q35's pci-hole64-size when nobody sets it


@dataclass(frozen=True)
class VMConfig:
    name: str
    accel: Accel
    kernel: Path
    initrd: Path
    disk: Path
    console_log: Path
    qmp_socket: Path
    ssh_port: int
    memory_mib: int = 2048
    cpus: int = 2
    iommu: str = "intel-iommu"
    devices: tuple[DeviceConfig, ...] = (DeviceConfig("edu"),)
    hugepages: tuple[tuple[str, int], ...] = ()
    extra_cmdline: tuple[str, ...] = ()
    qemu: str = "qemu-system-x86_64"
    arch: str = DEFAULT_ARCH
    user_qmp_socket: Path | None = None  # a second monitor for `vfio-lab qmp`
    gdb_port: int | None = None
    console_append: bool = False  # a restored guest's console follows the saved boot's


def kernel_cmdline(cfg: VMConfig) -> str:
    console = f"console={ARCHES[cfg.arch].console}"
    words = [console, *BASE_CMDLINE, *IOMMU_MODELS[cfg.iommu].kernel_cmdline()]
    for size, count in cfg.hugepages:
        words += [f"hugepagesz={size}", f"hugepages={count}"]
    return " ".join(words + list(cfg.extra_cmdline))


def hole64_size(devices: tuple[DeviceConfig, ...]) -> int | None:
    """q35's 64-bit PCI window, when the RAM BARs need more than its default: twice their
    total, a power of two, so that each fits at its natural alignment."""
    total = sum(d.ram_bar_size for d in devices)
    if total <= HOLE64_DEFAULT // 2:
        return None
    return 1 << (2 * total - 1).bit_length()


def pci_window_argv(cfg: VMConfig) -> list[str]:
    """The machine's 64-bit PCI window sized for the RAM BARs, where it has to be."""
    setting, hole = ARCHES[cfg.arch].pci_hole64, hole64_size(cfg.devices)
    return [] if setting is None or hole is None else ["-global", f"{setting}={hole}"]


def console_chardev(cfg: VMConfig) -> str:
    chardev = f"file,id=console,path={qemu_escape(str(cfg.console_log))}"
    return chardev + (",append=on" if cfg.console_append else "")


def build_argv(cfg: VMConfig) -> list[str]:
    iommu, arch = IOMMU_MODELS[cfg.iommu], ARCHES[cfg.arch]
    argv = [
        cfg.qemu,
        "-name", f"guest={qemu_escape(cfg.name)},process=vfio-lab",
        "-machine", arch.machine(iommu.machine_options(cfg.accel)),
        *ACCELS[cfg.accel].argv(),
        "-cpu", arch.cpu(cfg.accel),
        "-m", f"{cfg.memory_mib}M",
        "-smp", str(cfg.cpus),
        "-nodefaults", "-display", "none", "-no-reboot",
        *iommu.device_argv(),
        "-kernel", str(cfg.kernel),
        "-initrd", str(cfg.initrd),
        "-append", kernel_cmdline(cfg),
        "-drive", f"file={qemu_escape(str(cfg.disk))},format=qcow2,if=none,id=root,cache=unsafe",
        "-device", "virtio-blk-pci,drive=root",
        # restrict=on: the guest reaches nothing on the host or beyond (not the host's
        # loopback through 10.0.2.2, not other VMs' forwards); the SSH forward still works.
        "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{cfg.ssh_port}-:22",
        "-device", "virtio-net-pci,netdev=net0",
        "-chardev", console_chardev(cfg),
        "-serial", "chardev:console",
        "-qmp", f"unix:{qemu_escape(str(cfg.qmp_socket))},server=on,wait=off",
    ]  # fmt: skip
    argv += pci_window_argv(cfg)
    for index, dev in enumerate(cfg.devices):
        argv += DEVICES[dev.type].device_argv(dev, index)
    if cfg.user_qmp_socket is not None:
        argv += ["-qmp", f"unix:{qemu_escape(str(cfg.user_qmp_socket))},server=on,wait=off"]
    if cfg.gdb_port is not None:
        argv += ["-gdb", f"tcp:127.0.0.1:{cfg.gdb_port}"]
    return argv
