"""A private apt setup for kernel sources from other Debian suites, and for packages of
another architecture than the host's (an arm64 kernel image, an arm64 busybox).

It reads the host's mirror but keeps its own sources list, lists and archive cache
under the lab's cache, so nothing of the host's apt configuration changes: a foreign
architecture is one more in its own APT::Architectures, never `dpkg --add-architecture`.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from lab.core.cache import Cache, content_key
from lab.core.proc import capture, run_logged
from lab.core.progress import SILENT, Progress
from lab.model.arches import Arch, host_arch

SUITES = ("bookworm", "bookworm-backports", "trixie-backports", "sid")
RELEASE = "bookworm"  # the guests' Debian release: their root filesystem's suite
# Source packages (the lab's own QEMU) come from these.
SOURCE_SUITES = ("trixie",)
DEFAULT_MIRROR = "http://deb.debian.org/debian"
LISTS_MAX_AGE_S = 24 * 3600
UNPACKED = "root"  # an unpacked package's tree, in its cache entry
HOST_APT_STATE = (
    Path("/var/lib/apt/lists"),
    Path("/var/cache/apt/pkgcache.bin"),
    Path("/etc/apt/sources.list"),
    Path("/etc/apt/sources.list.d"),
    Path("/etc/apt/preferences.d"),
)


def host_mirror(etc: Path = Path("/etc/apt")) -> str:
    """The Debian mirror the lab fetches from, for kernel sources and the root filesystem
    alike: $VFIO_LAB_MIRROR, else the host's (deb822 or one-line sources), else
    deb.debian.org."""
    if env := os.environ.get("VFIO_LAB_MIRROR"):
        return env
    for path in sorted(etc.glob("sources.list.d/*.sources")):
        for m in re.finditer(r"^URIs:\s*(\S+)", path.read_text(), re.MULTILINE):
            if "security" not in m.group(1):
                return m.group(1).rstrip("/")
    one_line = etc / "sources.list"
    if one_line.exists():
        for m in re.finditer(
            r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", one_line.read_text(), re.MULTILINE
        ):
            if "security" not in m.group(1):
                return m.group(1).rstrip("/")
    return DEFAULT_MIRROR


def host_apt_state(roots: tuple[Path, ...] = HOST_APT_STATE) -> list[str]:
    """What the host's apt answers depend on, cheaply: the modification times of its lists,
    its package cache and its configuration (an `apt-get update` or a new source changes
    them)."""
    return [f"{p}:{p.stat().st_mtime_ns if p.exists() else '-'}" for p in roots]


class PrivateApt:
    """`foreign`: a Debian architecture (arm64) whose binary packages it also lists, in a
    setup of its own: the host's own lists do not grow by another architecture's.
    `release`: the suite whose versions it prefers (APT::Default-Release) to the newest of
    every suite it lists, as the host's apt of that release does."""

    def __init__(
        self, cache: Cache, mirror: str | None = None, foreign: str = "", release: str = ""
    ) -> None:
        self.cache = cache
        self.foreign = foreign
        self.release = release
        self.root = cache.root / (f"apt-{foreign}" if foreign else "apt")
        self.mirror = mirror or host_mirror()

    def options(self) -> list[str]:
        return [
            "-o", f"Dir::Etc::sourcelist={self.root / 'sources.list'}",
            "-o", "Dir::Etc::sourceparts=-",
            "-o", f"Dir::State::Lists={self.root / 'lists'}",
            "-o", f"Dir::Cache={self.root / 'cache'}",
            "-o", "APT::Sandbox::User=root",
            *(["-o", f"APT::Architectures::={self.foreign}"] if self.foreign else []),
            *(["-o", f"APT::Default-Release={self.release}"] if self.release else []),
        ]  # fmt: skip

    def qualified(self, package: str) -> str:
        """The package of the foreign architecture, where there is one."""
        return f"{package}:{self.foreign}" if self.foreign else package

    def sources_text(self) -> str:
        binaries = "".join(f"deb {self.mirror} {suite} main\n" for suite in SUITES)
        return binaries + "".join(f"deb-src {self.mirror} {s} main\n" for s in SOURCE_SUITES)

    def update(self, progress: Progress = SILENT) -> None:
        """Refresh the private lists when the sources changed or the lists are a day old;
        one run at a time, so two runs starting together do not write the lists at once."""
        with self.cache.lock("apt-lists"):
            self._update(progress)

    def _update(self, progress: Progress) -> None:
        for d in ("lists/partial", "cache/archives/partial"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        sources = self.root / "sources.list"
        stamp = self.root / "lists" / ".updated"
        fresh = stamp.exists() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE_S
        if sources.exists() and sources.read_text() == self.sources_text() and fresh:
            return
        sources.write_text(self.sources_text())
        progress("apt", f"updating private lists for {', '.join(SUITES)} from {self.mirror}")
        run_logged(
            ["apt-get", "-q", *self.options(), "update"],
            artifact="apt lists",
            log=self.root / "update.log",
        )
        stamp.touch()

    def state(self) -> list[str]:
        """What its answers depend on: the last refresh of its lists, and its sources."""
        stamp = self.root / "lists" / ".updated"
        stamped = str(stamp.stat().st_mtime_ns) if stamp.exists() else ""
        chosen = [o for o in (self.foreign, self.release) if o]
        return [stamped, self.sources_text(), *chosen]

    def candidate(self, package: str) -> str | None:
        """The version apt would fetch, asked once per refresh of the lists."""
        version = self.cache.memo(
            ["apt-candidate", package, *self.state()], lambda: self._policy(package) or ""
        )
        return version or None

    def _policy(self, package: str) -> str | None:
        out = capture(["apt-cache", *self.options(), "policy", package], artifact="apt lists")
        m = re.search(r"Candidate:\s*(\S+)", out)
        return m.group(1) if m and m.group(1) != "(none)" else None

    def source(self, package: str, version: str, dest: Path) -> Path:
        """Download a source package (.dsc, tarballs) into `dest`; returns the .dsc."""
        run_logged(
            ["apt-get", "-q", *self.options(), "source", "--download-only", f"{package}={version}"],
            artifact=f"{package} source",
            log=dest / "download.log",
            cwd=dest,
        )
        (dsc,) = dest.glob(f"{package}_*.dsc")
        return dsc

    def download(self, package: str, version: str, dest: Path) -> Path:
        (deb,) = self.download_all([(package, version)], dest)
        return deb

    def download_all(self, pinned: list[tuple[str, str]], dest: Path) -> list[Path]:
        """The .debs of (package, version) pairs, in order, fetched by one apt-get (each
        reads every list first: seconds apiece)."""
        run_logged(
            ["apt-get", "-q", *self.options(), "download",
             *(f"{self.qualified(package)}={version}" for package, version in pinned)],
            artifact=", ".join(package for package, _ in pinned),
            log=dest / "download.log",
            cwd=dest,
        )  # fmt: skip
        return [deb for package, _ in pinned for deb in dest.glob(f"{package}_*.deb")]

    def unpacked(self, package: str, version: str, progress: Progress = SILENT) -> Path:
        """The package's files (`dpkg-deb -x`: no maintainer script runs) in the cache, keyed
        by its name, architecture and version; the tree is fetched and unpacked once."""
        qualified = self.qualified(package)
        key = content_key(["unpacked", qualified, version])

        def unpack(scratch: Path) -> None:
            progress("apt", f"fetching and unpacking {qualified} {version}")
            deb = self.download(package, version, scratch)
            run_logged(
                ["dpkg-deb", "-x", deb, scratch / UNPACKED],
                artifact=package,
                log=scratch / "download.log",
            )
            deb.unlink()

        with self.cache.lock(f"packages-{key}"):
            entry = self.cache.ensure(
                "packages", key, unpack, progress, made_by=f"Debian package {qualified}={version}"
            )
        return entry / UNPACKED


def arch_apt(arch: Arch, cache: Cache, progress: Progress) -> PrivateApt | None:
    """Where Debian packages of `arch` come from: the host's apt for its own arch (None), the
    lab's private setup listing the arch for another (its lists refreshed if old), which
    prefers the guests' release as the host's apt does (the newest in sid is no stand-in:
    its kernel images are split into packages the lab does not unpack)."""
    if arch.name == host_arch():
        return None
    apt = PrivateApt(cache, foreign=arch.debian, release=RELEASE)
    apt.update(progress)
    return apt
