"""`vfio-lab doctor`: every prerequisite, its state, and the command that fixes it.

What every run needs fails the doctor when it is missing. What only guests of another arch
need (SETUP_OPTIONS) is a warning, unless the scenario the doctor is given has cells of
that arch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path

from lab.artifacts import kbuild
from lab.artifacts import qemu as qemu_build
from lab.artifacts.userns import (
    SUBGID,
    SUBUID,
    current_account,
    subids,
    with_sudo,
)
from lab.core.cache import Cache
from lab.core.errors import LabError, MissingPrerequisite
from lab.core.versions import version_text, version_tuple
from lab.model.arches import ARCHES, DEFAULT_ARCH, Arch, host_arch
from lab.vm.accel import KVM, host_cpuinfo, kvm_denied, no_hardware_virt

MIN_FREE_GIB = 5
MIN_QEMU = (7, 2)
# Debian's switch for user namespaces (absent elsewhere: then the kernel allows them), and
# the kernel's limit on them (0 forbids them).
USERNS_CLONE = Path("/proc/sys/kernel/unprivileged_userns_clone")
MAX_USERNS = Path("/proc/sys/user/max_user_namespaces")
# The guest arches whose host tools a run of the default arch does without, each with
# scripts/setup-host.sh's option that installs them all.
SETUP_OPTIONS = {"aarch64": "--arm64"}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    needed: bool = True  # False: missing, it is a warning (nothing asked for needs it)


def _tool(name: str, package: str) -> Callable[[], Check]:
    def check() -> Check:
        path = shutil.which(name) or (
            f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None
        )
        return Check(
            name, path is not None, path or "not found", with_sudo(f"apt-get install {package}")
        )

    return check


def check_qemu(binary: str = "qemu-system-x86_64", package: str = "qemu-system-x86") -> Check:
    fix = with_sudo(f"apt-get install --no-install-recommends {package}")
    if not shutil.which(binary):
        return Check(binary, False, "not found", fix)
    ok = version_tuple(binary) >= MIN_QEMU
    return Check(binary, ok, version_text(binary) or "no version", "" if ok else fix)


def check_lab_qemu(cache: Cache, arch: Arch) -> Check:
    """The lab's own QEMU (machine.qemu: lab) for `arch` guests: built already, or
    buildable here."""
    name = f"lab {arch.qemu_system}"
    try:
        built = qemu_build.built_info(arch, cache)
    except LabError as e:
        return Check(name, True, f"a damaged build will be rebuilt: {e}")
    if built is not None:
        version, patches = built
        return Check(name, True, f"built: {version} with {', '.join(patches) or 'no patches'}")
    detail = f"not built yet (machine.qemu: lab builds {qemu_build.VERSION} on first use)"
    if qemu_build.missing_build_depends():
        return Check(name, False, detail, with_sudo("scripts/setup-host.sh --qemu"))
    return Check(name, True, detail)


def check_busybox() -> Check:
    path = Path("/bin/busybox")
    # A dynamic busybox would find no libc in the initramfs; a static one has no ELF interpreter.
    ok = path.exists() and b"ld-linux" not in path.read_bytes()[:4096]
    return Check(
        "busybox (static)",
        ok,
        str(path) if path.exists() else "not found",
        with_sudo("apt-get install busybox-static"),
    )


def _headers(name: str, paths: tuple[str, ...], why: str, package: str) -> Callable[[], Check]:
    def check() -> Check:
        ok = any(Path(p).exists() for p in paths)
        return Check(name, ok, why, with_sudo(f"apt-get install {package}"))

    return check


check_libelf = _headers(
    "libelf headers",
    ("/usr/include/libelf.h", "/usr/include/gelf.h"),
    "for objtool in kernel builds",
    "libelf-dev",
)
check_libuuid = _headers(
    "libuuid headers", ("/usr/include/uuid/uuid.h",), "for kselftest-vfio", "uuid-dev"
)
check_libcap = _headers(
    "libcap headers", ("/usr/include/sys/capability.h",), "for kselftest-iommu", "libcap-dev"
)


def check_apt_lists() -> Check:
    out = subprocess.run(
        ["apt-cache", "policy", "linux-image-amd64"], capture_output=True, text=True, check=False
    )
    m = re.search(r"Candidate:\s*(\S+)", out.stdout)
    ok = bool(m) and m is not None and m.group(1) != "(none)"
    detail = f"linux-image-amd64 {m.group(1)}" if ok and m else "no candidate for linux-image-amd64"
    return Check("apt lists (stock kernel)", ok, detail, with_sudo("apt-get update"))


def check_python_modules() -> Check:
    missing = [m for m in ("paramiko", "yaml", "qemu.qmp") if importlib.util.find_spec(m) is None]
    return Check(
        "python modules",
        not missing,
        "missing: " + ", ".join(missing) if missing else "paramiko, pyyaml, qemu.qmp",
        "make setup",
    )


def check_subids(subuid: Path, subgid: Path) -> Check:
    """A user builds the root filesystem as root of a namespace of their own, which needs
    subordinate ids (lab.artifacts.userns); root needs none."""
    account = current_account()
    if account.uid == 0:
        return Check("subordinate ids", True, "not needed as root")
    ids = subids(account, subuid, subgid)
    if (ranges := ids.ranges()) is None:
        return Check("subordinate ids", False, "; ".join(ids.lacking), ids.fix)
    uids, gids = ranges
    return Check(
        "subordinate ids", True, f"uids {uids.start}+{uids.count}, gids {gids.start}+{gids.count}"
    )


def check_userns(clone: Path, most: Path) -> Check:
    if os.geteuid() == 0:
        return Check("user namespaces", True, "not needed as root")
    for path, fix in (
        (clone, "sudo sysctl -w kernel.unprivileged_userns_clone=1"),
        (most, "sudo sysctl -w user.max_user_namespaces=15000"),
    ):
        if path.exists() and path.read_text().strip() == "0":
            return Check("user namespaces", False, f"{path} is 0: the kernel forbids them", fix)
    return Check("user namespaces", True, "allowed for users")


def check_cache(cache: Cache) -> Check:
    cache.root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache.root).free / (1 << 30)
    ok = free >= MIN_FREE_GIB and os.access(cache.root, os.W_OK)
    return Check(
        "cache",
        ok,
        f"{cache.root} ({free:.1f} GiB free)",
        f"free {MIN_FREE_GIB} GiB or set VFIO_LAB_CACHE",
    )


def check_cache_owner(cache: Cache) -> Check:
    """Files of root's (or another user's) in this user's cache, as a run with sudo that
    kept HOME leaves, which this user's runs cannot replace. The top two levels only: the
    kinds and their entries."""
    uid = os.geteuid()
    paths = [cache.root, *cache.root.glob("*"), *cache.root.glob("*/*")]
    foreign = [p for p in paths if _owner(p) not in (uid, None)]
    account = current_account()
    return Check(
        "cache owner",
        not foreign,
        f"{len(foreign)} entries not {account.name}'s, such as {foreign[0]}"
        if foreign
        else f"{account.name}'s",
        f"sudo chown -R {account.name}: {cache.root}",
    )


def _owner(path: Path) -> int | None:
    try:
        return path.lstat().st_uid
    except FileNotFoundError:  # removed since it was listed
        return None


def check_kvm(cache: Cache, dev: Path) -> Check:
    if not dev.exists():
        return Check("kvm", True, f"no {dev}: guests run under TCG")
    if (denied := kvm_denied(dev)) is not None:
        return Check("kvm", False, f"{denied.why}: guests run under TCG", denied.fix)
    if (no_virt := no_hardware_virt(host_cpuinfo(), host_arch())) is not None:
        return Check("kvm", True, f"{no_virt}: guests run under TCG")
    verdicts = [
        json.loads(p.read_text()) for p in sorted((cache.root / "kvm-probe").glob("*.json"))
    ]
    if not verdicts:
        return Check(
            "kvm", True, f"{dev} opens; not probed yet (the first run boots a kernel under it)"
        )
    works, why = verdicts[-1]
    return Check("kvm", True, f"{'usable' if works else 'unusable, TCG is used'}: {why}")


def check_cross_compiler(arch: Arch) -> Check:
    """The compiler `arch`'s kernels and C selftests are built with on this host (kbuild's
    CROSS_COMPILE=), with its version."""
    cross = kbuild.cross_compile(arch)
    try:
        return Check(f"{cross}gcc", True, kbuild.compiler_identity(cross))
    except MissingPrerequisite as missing:
        return Check(missing.what, False, "not found", with_sudo(missing.fix))


def arch_checks(arch: Arch) -> list[Check]:
    """What guests of `arch` need of this host that a run of the default arch does not: their
    emulator, and the cross compiler of their kernels and C selftests."""
    return [check_qemu(arch.qemu_system, arch.qemu_package), check_cross_compiler(arch)]


def guest_arch_checks(needed: Collection[str]) -> list[Check]:
    """arch_checks of each arch SETUP_OPTIONS names, said to be for it; a failure where
    `needed` (the arches of a scenario's cells) has the arch, a warning otherwise. What is
    missing is fixed by the arch's setup option, or by its own package alone."""
    checks = []
    for name, option in SETUP_OPTIONS.items():
        setup = with_sudo(f"scripts/setup-host.sh {option}")
        checks += [
            replace(
                check,
                detail=f"{check.detail} (for {name} guests)",
                fix=f"{setup} (or this alone: {check.fix})" if check.fix else "",
                needed=name in needed,
            )
            for check in arch_checks(ARCHES[name])
        ]
    return checks


def all_checks(cache: Cache, arches: Collection[str] = ()) -> list[Check]:
    """Every check: what any run needs, and what guests of `arches` (a scenario's) need."""
    return host_checks(cache) + guest_arch_checks(arches)


def host_checks(cache: Cache) -> list[Check]:
    checks: list[Callable[[], Check]] = [
        check_qemu,
        _tool("qemu-img", "qemu-utils"),
        _tool("mmdebstrap", "mmdebstrap"),
        _tool("newuidmap", "uidmap"),
        # The paths are looked up when the checks run: tests point them at fakes.
        lambda: check_subids(SUBUID, SUBGID),
        lambda: check_userns(USERNS_CLONE, MAX_USERNS),
        _tool("mkfs.ext4", "e2fsprogs"),
        _tool("depmod", "kmod"),
        _tool("cpio", "cpio"),
        _tool("ssh-keygen", "openssh-client"),
        check_busybox,
        _tool("flex", "flex"),
        _tool("bison", "bison"),
        _tool("bc", "bc"),
        _tool("lz4", "lz4"),  # base.config packs x86 bzImages with it
        _tool("ccache", "ccache"),
        _tool("patch", "patch"),
        check_libelf,
        check_libuuid,
        check_libcap,
        check_apt_lists,
        check_python_modules,
        lambda: check_cache(cache),
        lambda: check_cache_owner(cache),
        lambda: check_lab_qemu(cache, ARCHES[DEFAULT_ARCH]),
        lambda: check_kvm(cache, KVM),
    ]
    return [c() for c in checks]


def require_qemu(choice: str, arches: list[str], cache: Cache) -> None:
    """Before a run: the QEMU machine.qemu names for each arch of the cells, first, since
    nothing works without it."""
    for name in arches:
        arch = ARCHES[name]
        check = (
            check_lab_qemu(cache, arch)
            if choice == "lab"
            else check_qemu(arch.qemu_system if choice == "system" else choice, arch.qemu_package)
        )
        if not check.ok:
            raise MissingPrerequisite(f"{check.name} ({check.detail})", check.fix)


def healthy(checks: list[Check]) -> bool:
    """Nothing that is needed is missing (warnings do not count)."""
    return all(c.ok or not c.needed for c in checks)


def report(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        mark = "ok " if c.ok else "MISSING" if c.needed else "WARN"
        line = f"{mark:7} {c.name.ljust(width)}  {c.detail}"
        if not c.ok:
            line += f"\n        fix: {c.fix}"
        lines.append(line)
    return "\n".join(lines)
