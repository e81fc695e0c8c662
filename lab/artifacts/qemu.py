"""The lab's own QEMU: Debian's qemu source package with the lab's patches (the tweaked
edu among them), one system emulator per guest arch (one softmmu target per build and
cache entry, so an x86_64-only user never builds aarch64's), with ccache and cached.

Debian bookworm's QEMU is 7.2: no igb, and an edu with one 1 MiB register BAR. trixie's
10.0 builds on bookworm with a newer meson (a wheel from PyPI) and bookworm's own
firmware (seabios, iPXE), found through --firmwarepath. aarch64's virt boots its -kernel
without firmware; its virtio-net-pci still loads iPXE's efi-virtio.rom from there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from lab.artifacts.apt import PrivateApt
from lab.artifacts.kbuild import compiler_identity
from lab.artifacts.patches import apply_patches
from lab.core.cache import Cache, CorruptCacheFile, content_key, record_made_by, tree_digest
from lab.core.data import IMAGES
from lab.core.errors import BuildError
from lab.core.files import copy_file
from lab.core.proc import capture, run_logged
from lab.core.progress import SILENT, Progress
from lab.core.registry import Registry
from lab.core.versions import qemu_version
from lab.model.arches import Arch

PACKAGE = "qemu"
VERSION = "1:10.0.13+ds-0+deb13u1"  # trixie's; known to build on bookworm
MESON = "meson==1.5.0"  # QEMU 10.0 needs >= 1.5; bookworm has 1.0
PATCHES = IMAGES / "qemu" / "patches"
# Only what the lab's guests use; whatever has no -dev package installed is left out anyway.
# The target list comes first, from the arch (configure_args).
CONFIGURE = (
    "--disable-install-blobs",
    "--disable-docs",
    "--disable-werror",
    "--disable-tools",
    "--disable-gtk",
    "--disable-sdl",
    "--disable-vnc",
    "--disable-spice",
    "--disable-opengl",
    "--enable-slirp",
    "--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu",
)
# Debian packages the build needs beyond those of a kernel build (scripts/setup-host.sh),
# whatever the target: aarch64-softmmu cannot do without libfdt (TARGET_NEED_FDT), and
# nothing else it needs is arch-specific (Debian's Build-Depends agree).
BUILD_DEPENDS = (
    "libglib2.0-dev",
    "libpixman-1-dev",
    "libslirp-dev",
    "libfdt-dev",
    "ninja-build",
    "dpkg-dev",  # dpkg-source unpacks the source package
)
_NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]")


@dataclass(frozen=True)
class QemuBinary:
    """The emulator a cell runs, and what says which one it was."""

    binary: str  # a path, or a command on PATH
    origin: str  # system | lab | path
    version: str  # e.g. 10.0.13, or 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)
    patches: tuple[str, ...] = ()  # the lab's patches it carries, in order
    build_s: float | None = None  # the build that made it, if this call built it


class QemuSource:
    """Where the emulator of a guest arch comes from."""

    name: ClassVar[str]
    doc: ClassVar[str]

    def provide(self, arch: Arch, cache: Cache, progress: Progress) -> QemuBinary:
        raise NotImplementedError

    def describe(self, arch: Arch) -> str:
        """What it is, without building anything (for --dry-run)."""
        raise NotImplementedError

    def placeholder(self, arch: Arch) -> str:
        """Its binary as --dry-run shows it, without building anything."""
        raise NotImplementedError


class SystemQemu(QemuSource):
    name = "system"
    doc = "Debian's qemu-system-ARCH (7.2 on bookworm)"

    def provide(self, arch: Arch, cache: Cache, progress: Progress) -> QemuBinary:
        return QemuBinary(arch.qemu_system, self.name, qemu_version(arch.qemu_system))

    def describe(self, arch: Arch) -> str:
        return f"{arch.qemu_system} {qemu_version(arch.qemu_system)}"

    def placeholder(self, arch: Arch) -> str:
        return arch.qemu_system


class BuiltQemu(QemuSource):
    name = "lab"
    doc = f"built by the lab from Debian's qemu {VERSION} with images/qemu/patches"

    def provide(self, arch: Arch, cache: Cache, progress: Progress) -> QemuBinary:
        return ensure_lab_qemu(arch, cache, progress)

    def describe(self, arch: Arch) -> str:
        return f"the lab's build of qemu {VERSION} with {', '.join(series()) or 'no patches'}"

    def placeholder(self, arch: Arch) -> str:
        return "<lab qemu>"


QEMU_SOURCES: Registry[QemuSource] = Registry(
    "QEMU", {s.name: s() for s in (SystemQemu, BuiltQemu)}
)


def provide_qemu(choice: str, arch: Arch, cache: Cache, progress: Progress = SILENT) -> QemuBinary:
    """The QEMU a scenario's machine.qemu names for guests of `arch`: a registered source,
    or a path."""
    if choice in QEMU_SOURCES:
        return QEMU_SOURCES[choice].provide(arch, cache, progress)
    return QemuBinary(choice, "path", qemu_version(choice))


def describe_qemu(choice: str, arch: Arch) -> str:
    return QEMU_SOURCES[choice].describe(arch) if choice in QEMU_SOURCES else choice


def qemu_placeholder(choice: str, arch: Arch) -> str:
    return QEMU_SOURCES[choice].placeholder(arch) if choice in QEMU_SOURCES else choice


def series() -> list[str]:
    """The patches in the order the series file lists them."""
    lines = (PATCHES / "series").read_text().splitlines()
    return [p for line in lines if (p := line.split("#", 1)[0].strip())]


def configure_args(arch: Arch) -> tuple[str, ...]:
    """./configure's options for the emulator of `arch` guests: its target only."""
    return (f"--target-list={arch.qemu_target}", *CONFIGURE)


def qemu_key(arch: Arch) -> str:
    # x86_64's inputs are those of the x86_64-only build that came before, so its key held.
    return content_key(
        ["lab-qemu", VERSION, tree_digest(PATCHES), *configure_args(arch), compiler_identity()]
    )


def ensure_lab_qemu(arch: Arch, cache: Cache, progress: Progress = SILENT) -> QemuBinary:
    """The lab's QEMU for `arch` guests from the cache, built first if it is missing or
    damaged."""
    key = qemu_key(arch)
    built: list[float] = []

    def build(scratch: Path) -> None:
        started = time.monotonic()
        _build(arch, cache, scratch, progress)
        built.append(round(time.monotonic() - started, 1))

    with cache.lock(f"qemu-{key}"):
        made_by = (
            f"the lab's {arch.qemu_system} {VERSION} with {', '.join(series()) or 'no patches'}"
        )
        entry = cache.ensure("qemu", key, build, progress, made_by=made_by)
    version, patches = read_info(entry / "qemu.json")
    return QemuBinary(
        str(entry / arch.qemu_system),
        BuiltQemu.name,
        version,
        patches,
        built[0] if built else None,
    )


def read_info(path: Path) -> tuple[str, tuple[str, ...]]:
    """(version, patches) a build recorded; a file that says otherwise is named."""
    try:
        info = json.loads(path.read_text())
        return str(info["version"]), tuple(str(p) for p in info["patches"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCacheFile(path, str(e) or type(e).__name__) from e


def built_info(arch: Arch, cache: Cache) -> tuple[str, tuple[str, ...]] | None:
    """What the newest finished build of the lab's QEMU for `arch` guests is, if there is
    one: an entry holds the one emulator it was built for."""
    done = sorted(
        cache.root.glob(f"qemu/[!.]*/{arch.qemu_system}"), key=lambda p: p.stat().st_mtime
    )
    return read_info(done[-1].with_name("qemu.json")) if done else None


def _build(arch: Arch, cache: Cache, scratch: Path, progress: Progress) -> None:
    missing = missing_build_depends()
    if missing:
        raise BuildError(
            "qemu",
            f"missing build dependencies: {' '.join(missing)} "
            "(scripts/setup-host.sh --qemu, or apt-get install them)",
        )
    # One source directory for every build of this version, whatever its target: the same
    # paths each time, so ccache serves a rebuild after a patch changed, and another
    # arch's build the code all targets share.
    work = build_tree(cache)
    work.mkdir(parents=True, exist_ok=True)
    record_made_by(work, f"source and build tree of {PACKAGE} {VERSION}")
    # Beside the source, not in the entry's scratch: a failed build's log must outlive it.
    log = work / "build.log"
    log.unlink(missing_ok=True)
    with cache.lock("qemu-build"):
        src = _fresh_source(cache, work, log, progress)
        apply_patches([PATCHES / name for name in series()], src, "qemu", log, progress)
        _configure(arch, src, cache, log, progress)
        _ninja(arch, src, cache, log, progress)
        # Not a hard link: the next build relinks the binary in this build tree.
        copy_file(src / "build" / arch.qemu_system, scratch / arch.qemu_system)
    version = qemu_version(str(scratch / arch.qemu_system))
    info = {"version": version, "patches": series(), "package": VERSION}
    (scratch / "qemu.json").write_text(json.dumps(info, indent=2) + "\n")


def build_tree(cache: Cache) -> Path:
    """Where the source is unpacked and patched (`src/`, QEMU's own scripts among it)."""
    work_key = content_key([PACKAGE, VERSION])
    cache.use("qemu-build", work_key)
    return cache.entry("qemu-build", work_key)


def missing_build_depends() -> list[str]:
    return [p for p in BUILD_DEPENDS if not _installed(p)]


def _installed(package: str) -> bool:
    out = capture(["dpkg-query", "-W", "-f=${Status}", package], artifact="qemu", check=False)
    return out == "install ok installed"


def _fresh_source(cache: Cache, work: Path, log: Path, progress: Progress) -> Path:
    """Debian's source, unpacked again (so no earlier patch lingers), and meson's wheel."""
    download = work / "download"
    if not download.is_dir():
        # All of it or nothing: an interrupted download must not pass for a finished one.
        apt = PrivateApt(cache)
        apt.update(progress)
        progress("qemu", f"fetching the {PACKAGE} {VERSION} source package")
        partial = work / "download.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        apt.source(PACKAGE, VERSION, partial)
        partial.rename(download)
    (dsc,) = download.glob(f"{PACKAGE}_*.dsc")
    src = work / "src"
    shutil.rmtree(src, ignore_errors=True)
    progress("qemu", f"unpacking {dsc.name}")
    run_logged(["dpkg-source", "-x", dsc, src], artifact="qemu", log=log)
    wheels = src / "python" / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    run_logged(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", wheels, MESON],
        artifact="qemu",
        log=log,
    )
    return src


def _env(cache: Cache) -> dict[str, str]:
    # meson finds ccache on PATH by itself; the lab's ccache directory is shared with kernels.
    return dict(os.environ, CCACHE_DIR=str(cache.root / "ccache"))


def _configure(arch: Arch, src: Path, cache: Cache, log: Path, progress: Progress) -> None:
    progress("qemu", f"configuring ({arch.qemu_target} only)")
    run_logged(
        ["./configure", "--python=/usr/bin/python3", *configure_args(arch)],
        artifact="qemu",
        log=log,
        cwd=src,
        env=_env(cache),
    )


def _ninja(arch: Arch, src: Path, cache: Cache, log: Path, progress: Progress) -> None:
    jobs = os.cpu_count() or 1
    progress("qemu", f"building {arch.qemu_system} with {jobs} jobs (ccache); log: {log}")
    run_logged(
        ["ninja", "-C", src / "build", f"-j{jobs}", arch.qemu_system],
        artifact="qemu",
        log=log,
        env=_env(cache),
        on_line=NinjaProgress(progress),
    )


class NinjaProgress:
    """ninja's `[N/M]` lines, told every 10% of the way."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.told = -1

    def __call__(self, line: str) -> None:
        m = _NINJA_STEP.match(line)
        if not m:
            return
        done, total = int(m.group(1)), int(m.group(2))
        tenth = done * 10 // max(total, 1)
        if tenth > self.told:
            self.told = tenth
            self.progress("qemu", f"{done}/{total} build steps")
