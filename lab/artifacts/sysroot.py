"""Another architecture's libraries for cross-building guest programs (the C selftests):
Debian's `PACKAGE:ARCH` from the lab's private apt setup, unpacked with `dpkg-deb -x`
into a cache entry, never installed on the host (no `dpkg --add-architecture`).

The cross compiler brings the arch's C library (libc6-dev-ARCH-cross); a sysroot adds
only what a program links besides, and is passed to the compiler as `-isystem` and `-L`
rather than `--sysroot`, which would hide that C library.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.artifacts.apt import RELEASE, PrivateApt
from lab.core.cache import Cache, content_key
from lab.core.errors import BuildError
from lab.core.proc import run_logged
from lab.core.progress import Progress
from lab.model.arches import Arch


@dataclass(frozen=True)
class Sysroot:
    path: Path
    triplet: str  # Debian's multiarch directory, the cross compiler's triplet
    key: str  # what it holds, for the keys of what is linked against it

    @property
    def include(self) -> Path:
        return self.path / "usr" / "include"

    @property
    def lib(self) -> Path:
        return self.path / "usr" / "lib" / self.triplet


def pinned_packages(packages: tuple[str, ...], apt: PrivateApt) -> list[tuple[str, str]]:
    """(package, version) of each package in RELEASE for the setup's foreign arch."""
    pinned = []
    for package in packages:
        version = apt.candidate(apt.qualified(package))
        if version is None:
            raise BuildError(
                "sysroot", f"{apt.mirror} serves no {apt.qualified(package)} in {RELEASE}"
            )
        pinned.append((package, version))
    return pinned


def sysroot_key(pinned: list[tuple[str, str]], arch: Arch) -> str:
    return content_key(["sysroot", *(f"{p}={v}" for p, v in pinned), *arch.key()])


def provide_sysroot(
    packages: tuple[str, ...], arch: Arch, cache: Cache, progress: Progress
) -> Sysroot:
    """The sysroot of `packages` for `arch`, unpacked if the cache lacks it."""
    # The guests' release: bookworm's libraries link with bookworm's cross toolchain, while
    # sid's (the newest in the private setup) may call glibc symbols that bookworm's C
    # library lacks (its __isoc23_* functions).
    apt = PrivateApt(cache, foreign=arch.debian, release=RELEASE)
    apt.update(progress)
    pinned = pinned_packages(packages, apt)
    key = sysroot_key(pinned, arch)

    named = ", ".join(f"{p}={v}" for p, v in pinned)

    def unpack(scratch: Path) -> None:
        progress("sysroot", f"unpacking {named} for {arch.debian}")
        for deb in apt.download_all(pinned, scratch):
            run_logged(
                ["dpkg-deb", "-x", deb, scratch], artifact="sysroot", log=scratch / "unpack.log"
            )
            deb.unlink()

    with cache.lock(f"sysroot-{key}"):
        made_by = f"sysroot for {arch.debian}: {named}"
        entry = cache.ensure("sysroot", key, unpack, progress, made_by=made_by)
    return Sysroot(entry, arch.toolchain, key)
