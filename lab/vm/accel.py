"""Choosing the accelerator: KVM only when it really runs a guest, otherwise TCG.

`/dev/kvm` existing proves little: on some hosts (nested, paravirtual KVM) it opens
but fails in the kernel decompressor. So `auto` boots the cell's own kernel under
KVM for a few seconds and looks for its first console line. The verdict is cached
per host kernel, QEMU version and guest kernel.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lab.core.cache import Cache, content_key
from lab.core.errors import InfraError
from lab.core.files import HostFile, make_dir, write_atomic
from lab.core.proc import die_with_lab
from lab.core.versions import version_text
from lab.spec.variants import Accel

PROBE_SECONDS = 20.0
BOOT_MARK = "Linux version"


@dataclass(frozen=True)
class AccelChoice:
    accel: Accel
    reason: str


def probe_argv(qemu: str, kernel: Path, console: Path) -> list[str]:
    return [
        qemu, "-accel", "kvm", "-machine", "q35", "-cpu", "host", "-m", "256M",
        "-nodefaults", "-display", "none", "-no-reboot",
        "-kernel", str(kernel), "-append", "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1",
        "-serial", f"file:{console}",
    ]  # fmt: skip


def probe_kvm(qemu: str, kernel: Path, cache: Cache) -> tuple[bool, str]:
    """(works, why): boot `kernel` under KVM until it prints its banner."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is absent or not accessible"
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
                return True, "KVM booted the guest kernel"
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    text = log.read_text(errors="replace").strip().splitlines()
    detail = next(
        (line for line in text if "error" in line.lower()), text[-1] if text else "no output"
    )
    return False, f"KVM cannot run the guest kernel: {detail.strip()}"


def _probe_once(qemu: str, kernel: Path, kernel_digest: str, cache: Cache) -> tuple[bool, str]:
    """The probe's verdict, remembered per host kernel, QEMU and guest kernel. Two runs
    starting at once probe once: the second waits for the first's verdict."""
    key = content_key([platform.release(), version_text(qemu), kernel_digest])
    memo = cache.root / "kvm-probe" / f"{key}.json"
    with cache.lock(f"kvm-probe-{key}"):
        with contextlib.suppress(OSError, ValueError):
            works, why = json.loads(memo.read_text())
            return bool(works), str(why)
        works, why = probe_kvm(qemu, kernel, cache)
        make_dir(memo.parent)
        write_atomic(memo, json.dumps([works, why]))
    return works, why


def choose(
    requested: str, qemu: str, kernel: Path, kernel_digest: str, cache: Cache
) -> AccelChoice:
    if requested == "tcg":
        return AccelChoice(
            "tcg", "TCG was asked for (--accel, the scenario, or the run being repeated)"
        )
    works, why = _probe_once(qemu, kernel, kernel_digest, cache)
    if requested == "kvm":
        if not works:
            raise InfraError(f"--accel kvm was requested, but {why}")
        return AccelChoice("kvm", "KVM was asked for and works")
    return AccelChoice("kvm", why) if works else AccelChoice("tcg", f"auto: {why}; using TCG")
