"""The one boot that installs the packages of another arch's root filesystem (its second
stage, lab.artifacts.rootfs): that arch's machine under TCG, with the lab's debian-stock
kernel and initramfs for the arch, on the image itself (no overlay: what the guest writes
is the image), until the guest powers off. tests/integration/test_foreign_rootfs.py runs
it for real.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.artifacts.kernels import KERNEL_BUILDERS, KernelArtifact
from lab.artifacts.qemu import SystemQemu, provide_qemu
from lab.core.cache import Cache
from lab.core.errors import BuildError, InfraError
from lab.core.progress import SILENT, Progress
from lab.model.arches import Arch
from lab.model.kernelspec import DebianStockKind, KernelSpec
from lab.vm.machine import Machine, tail
from lab.vm.qemu import VMConfig, build_argv
from lab.vm.ssh import free_port

# The whole second stage took 402-450 s under TCG on a 2-core AMD EPYC (~150 packages'
# maintainer scripts, Python's byte compilation the most of it; a kernel build beside it
# once). Six times that leaves room for a slower or busier host; past it, something hangs.
DEADLINE_S = 45 * 60.0
POLL_S = 1.0  # how often the wait looks at a Ctrl-C of the run


def second_stage_config(
    arch: Arch,
    kernel: KernelArtifact,
    qemu: str,
    disk: Path,
    console: Path,
    sockets: Path,
    ssh_port: int,
) -> VMConfig:
    """The arch's machine with its default IOMMU (the one its cells have) and no test
    device, under TCG: another arch than the host's never runs under KVM."""
    return VMConfig(
        name="vfio-lab:rootfs-second-stage",
        accel="tcg",
        kernel=kernel.boot_image,
        initrd=kernel.initramfs,
        disk=disk,
        console_log=console,
        qmp_socket=sockets / "qmp.sock",
        ssh_port=ssh_port,  # QEMU's user network forwards it always; nothing connects
        iommu=arch.default_iommu,
        devices=(),
        qemu=qemu,
        arch=arch.name,
    )


@dataclass(frozen=True)
class StockKernelBoot:
    """A rootfs.FirstBoot. `stopping` set (lab.run.booter's Ctrl-C) stops the guest."""

    cache: Cache
    progress: Progress = SILENT
    stopping: threading.Event = field(default_factory=threading.Event)

    def __call__(self, arch: Arch, disk: Path, console: Path) -> None:
        spec = KernelSpec(DebianStockKind.name, "")
        kernel = KERNEL_BUILDERS[spec.source].prepare(spec, arch, self.cache, self.progress)
        qemu = provide_qemu(SystemQemu.name, arch, self.cache, self.progress)
        with self.cache.scratch("vm-", sockets=True) as sockets:
            cfg = second_stage_config(
                arch, kernel, qemu.binary, disk, console, sockets, free_port()
            )
            qemu_log = console.with_name("second-stage-qemu.log")
            with Machine(build_argv(cfg), cfg.qmp_socket, qemu_log, console) as machine:
                self._wait(machine, console)

    def _wait(self, machine: Machine, console: Path) -> None:
        """Until QEMU exits: the guest powered off (or its init died, and the kernel
        panicked and QEMU did not reboot); what it did, the console says."""
        deadline = time.monotonic() + DEADLINE_S
        while machine.exit_status(wait=POLL_S) is None:
            if self.stopping.is_set():
                raise InfraError("the run was interrupted")
            if time.monotonic() > deadline:
                raise BuildError(
                    "rootfs",
                    f"the second stage's boot did not end within {DEADLINE_S:g} s",
                    tail(console),
                )
