"""Choosing the accelerator: KVM only when it really runs a guest, otherwise TCG.

`/dev/kvm` existing proves little: on some hosts (nested, paravirtual KVM) it opens
but fails in the kernel decompressor, or (a kernel booted through PVH, with no
decompressor) a few lines later, where the kernel sets up the FPU. So on an x86 CPU
without vmx or svm KVM is not even tried (PVM's kvm_pvm runs only its own guest
kernels), and otherwise `auto` boots the cell's own kernel under KVM for a few seconds
and waits for a line past the CPU's set-up. The verdict is cached per host kernel, QEMU
version, guest kernel, host CPU and the line waited for.

The CPU a guest sees is named here too (`GuestCpu`): caches are shared across CI runners,
and a guest saved on one CPU under KVM may fault on another.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.core.accounts import group_name, user_name
from lab.core.cache import Cache, content_key
from lab.core.errors import InfraError, UsageError
from lab.core.files import HostFile, make_dir, write_atomic
from lab.core.proc import die_with_lab
from lab.core.versions import version_text
from lab.model.arches import Arch, host_arch
from lab.model.variants import Accel

PROBE_SECONDS = 20.0
# Past CPU, FPU and SMP set-up: the root mount the probe gives nothing for ("VFS: Cannot
# open root device"). "Linux version" was not enough: under PVM a PVH-booted kernel
# prints it and then stops at its first xrstor.
BOOT_MARK = "VFS: "
HARDWARE_VIRT = frozenset({"vmx", "svm"})
CPUINFO = Path("/proc/cpuinfo")
KVM = Path("/dev/kvm")


@dataclass(frozen=True)
class AccelChoice:
    accel: Accel
    reason: str


@dataclass(frozen=True)
class GuestCpu:
    """The CPU a guest sees, as far as a saved guest or a probe's verdict depends on it.
    Under KVM (`-cpu host`) QEMU passes the host CPU's model and flags through, so a guest
    saved on a CPU with more features than this one may use one that is not here. Under
    TCG (`-cpu max`) QEMU emulates every feature it implements whatever the host has, so
    the guest's CPU is the same on every host: only the accelerator is named."""

    accel: Accel
    model: str = ""
    flags: tuple[str, ...] = ()  # sorted

    def key(self) -> str:
        return f"{self.accel}|{self.model}|{' '.join(self.flags)}"

    def as_json(self) -> dict[str, Any]:
        return {"accel": self.accel, "model": self.model, "flags": list(self.flags)}

    @classmethod
    def from_json(cls, d: Any) -> GuestCpu:
        """ValueError for anything but what `as_json` writes."""
        if not isinstance(d, dict) or d.get("accel") not in ("kvm", "tcg"):
            raise ValueError(f"not a guest CPU: {d!r}")
        flags, model = d.get("flags"), d.get("model")
        if not isinstance(model, str) or not isinstance(flags, list):
            raise ValueError(f"not a guest CPU: {d!r}")
        return cls(d["accel"], model, tuple(sorted(str(f) for f in flags)))

    def unlike(self, saved: GuestCpu) -> str | None:
        """Why a guest saved on `saved` is not one this CPU may run; None when it is."""
        if saved == self:
            return None
        why = []
        if saved.accel != self.accel:
            why.append(f"under {saved.accel}, and this guest runs under {self.accel}")
        if saved.model != self.model:
            why.append(f"on a {saved.model or 'CPU of no model'}, and this host has a "
                       f"{self.model or 'CPU of no model'}")  # fmt: skip
        if lacking := sorted(set(saved.flags) - set(self.flags)):
            why.append(f"with CPU flags this host lacks: {_some(lacking)}")
        if extra := sorted(set(self.flags) - set(saved.flags)):
            why.append(f"without CPU flags this host has: {_some(extra)}")
        return "it was saved " + "; ".join(why)


def _some(names: list[str], most: int = 8) -> str:
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return " ".join(names[:most]) + more


def parse_cpuinfo(text: str) -> tuple[str, tuple[str, ...]]:
    """The first processor's model name and flags, from /proc/cpuinfo's text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() and fields:
            break  # the end of the first processor's block
        name, colon, value = line.partition(":")
        if colon:
            fields.setdefault(name.strip(), value.strip())
    return fields.get("model name", ""), tuple(sorted(set(fields.get("flags", "").split())))


def guest_cpu(accel: Accel, cpuinfo: str) -> GuestCpu:
    """The CPU a guest under `accel` sees on a host whose /proc/cpuinfo reads `cpuinfo`."""
    if accel == "tcg":
        return GuestCpu("tcg")
    model, flags = parse_cpuinfo(cpuinfo)
    return GuestCpu(accel, model, flags)


def host_cpuinfo() -> str:
    with contextlib.suppress(OSError):
        return CPUINFO.read_text()
    return ""


def probe_argv(qemu: str, kernel: Path, console: Path) -> list[str]:
    return [
        qemu, "-accel", "kvm", "-machine", "q35", "-cpu", "host", "-m", "256M",
        "-nodefaults", "-display", "none", "-no-reboot",
        "-kernel", str(kernel), "-append", "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1",
        "-serial", f"file:{console}",
    ]  # fmt: skip


@dataclass(frozen=True)
class KvmDenied:
    """Why this user may not open /dev/kvm, and the one command that lets them."""

    why: str
    fix: str


def kvm_denial(
    dev: Path, mode: int, owner: str, group: str, in_group: bool, user: str
) -> KvmDenied:
    """For a /dev/kvm of `mode` and `owner`:`group` that `user` may not open read-write."""
    where = f"{dev} is {stat.filemode(mode)} {owner}:{group}"
    group_rw = stat.S_IRGRP | stat.S_IWGRP
    # Joining a group is the fix where the group may use it, but never joining root's.
    if mode & group_rw == group_rw and not in_group and group != "root":
        return KvmDenied(
            f"{user} is not in group {group} ({where})",
            f"sudo usermod -aG {group} {user} (then log in again)",
        )
    # systemd's own rule gives /dev/kvm 0666; some hosts keep it root's alone.
    return KvmDenied(f"{where}, which {user} may not open", f"sudo chmod 0666 {dev}")


def kvm_denied(dev: Path) -> KvmDenied | None:
    """None when this process may open `dev` (present) read-write."""
    if os.access(dev, os.R_OK | os.W_OK):
        return None
    st = dev.stat()
    in_group = st.st_gid == os.getegid() or st.st_gid in os.getgroups()
    return kvm_denial(dev, st.st_mode, user_name(st.st_uid), group_name(st.st_gid), in_group,
                      user_name(os.geteuid()))  # fmt: skip


def kvm_unusable() -> str | None:
    """Why no probe is worth running: /dev/kvm is absent, this user may not open it, or
    the CPU cannot run hardware-assisted guests."""
    if not KVM.exists():
        return f"{KVM} is absent"
    if (denied := kvm_denied(KVM)) is not None:
        return f"{denied.why}; fix: {denied.fix}"
    return no_hardware_virt(host_cpuinfo(), host_arch())


def no_hardware_virt(cpuinfo: str, host: str) -> str | None:
    """Why KVM on an x86 host with this /proc/cpuinfo cannot run a stock guest kernel:
    without vmx or svm it is software virtualisation (PVM). Unread or other arches: None."""
    _, flags = parse_cpuinfo(cpuinfo)
    if host != "x86_64" or not flags or HARDWARE_VIRT & set(flags):
        return None
    return (
        f"{KVM} opens, but the CPU has neither vmx nor svm: this KVM is not hardware "
        "virtualisation (PVM's kvm_pvm runs only PVM guest kernels)"
    )


def probe_kvm(qemu: str, kernel: Path, cache: Cache) -> tuple[bool, str]:
    """(works, why): boot `kernel` under KVM until it prints its banner."""
    with cache.scratch("kvm-probe-") as tmp:
        console = tmp / "console.log"
        log = tmp / "qemu.log"
        with HostFile(log, "wb") as out:
            # Dies with the lab even on SIGKILL: a QEMU hung in the decompressor under a
            # broken KVM would otherwise run forever.
            proc = subprocess.Popen(
                [*die_with_lab(), *probe_argv(qemu, kernel, console)],
                stdout=out.fileno(),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            return _watch(proc, console, log)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _watch(proc: subprocess.Popen[bytes], console: Path, log: Path) -> tuple[bool, str]:
    deadline = time.monotonic() + PROBE_SECONDS
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if BOOT_MARK in console.read_text(errors="replace"):
                return True, "KVM booted the guest kernel past its CPU set-up"
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    text = log.read_text(errors="replace").strip().splitlines()
    detail = next(
        (line for line in text if "error" in line.lower()), text[-1] if text else "no output"
    )
    return False, f"KVM cannot run the guest kernel: {detail.strip()}"


def _probe_once(qemu: str, kernel: Path, kernel_digest: str, cache: Cache) -> tuple[bool, str]:
    """The probe's verdict, remembered per host kernel, QEMU, guest kernel and host CPU (a
    cache shared by CI runners holds other hosts' verdicts). Two runs starting at once
    probe once: the second waits for the first's verdict."""
    # Not remembered: a user added to group kvm (or a chmod) must not find the old verdict.
    if (why := kvm_unusable()) is not None:
        return False, why
    cpu = guest_cpu("kvm", host_cpuinfo())
    key = probe_key(platform.release(), version_text(qemu), kernel_digest, cpu)
    memo = cache.root / "kvm-probe" / f"{key}.json"
    with cache.lock(f"kvm-probe-{key}"):
        with contextlib.suppress(OSError, ValueError):
            works, why = json.loads(memo.read_text())
            return bool(works), str(why)
        works, why = probe_kvm(qemu, kernel, cache)
        make_dir(memo.parent)
        write_atomic(memo, json.dumps([works, why]))
    return works, why


def probe_key(host_kernel: str, qemu_version: str, kernel_digest: str, cpu: GuestCpu) -> str:
    return content_key([host_kernel, qemu_version, kernel_digest, cpu.key(), BOOT_MARK])


def foreign_choice(requested: str, arch: Arch, host: str) -> AccelChoice | None:
    """For guests of another arch than the host's: TCG without a probe, or a usage error
    when KVM was asked for. None for the host's own arch, where KVM may work."""
    if arch.runs_kvm(host):
        return None
    why = f"KVM runs only guests of the host's architecture, {host}, not {arch.name}"
    if requested == "kvm":
        raise UsageError(f"--accel kvm was requested, but {why}: use tcg or auto")
    return AccelChoice("tcg", f"{requested}: {why}; using TCG")


def choose(
    requested: str,
    arch: Arch,
    qemu: str,
    kernel: Path,
    kernel_digest: str,
    cache: Cache,
    host: str | None = None,
) -> AccelChoice:
    """The accelerator for guests of `arch` on this host (`host`: its architecture)."""
    if requested == "tcg":
        return AccelChoice(
            "tcg", "TCG was asked for (--accel, the scenario, or the run being repeated)"
        )
    foreign = foreign_choice(requested, arch, host or host_arch())
    if foreign is not None:
        return foreign
    works, why = _probe_once(qemu, kernel, kernel_digest, cache)
    if requested == "kvm":
        if not works:
            raise InfraError(f"--accel kvm was requested, but {why}")
        return AccelChoice("kvm", "KVM was asked for and works")
    return AccelChoice("kvm", why) if works else AccelChoice("tcg", f"auto: {why}; using TCG")
