"""Kernels built from source: fetch a tree, merge and verify its config, build with ccache.

Artifacts are cached under (source identity, hash of the final .config, compiler,
initramfs recipe and busybox, guest arch). ccache is shared by every build, so flipping
one option rebuilds only what that option touches. A kernel for another arch than the
host's is cross-built (ARCH=, CROSS_COMPILE= on every make of its tree).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from lab.artifacts.busybox import Busybox
from lab.artifacts.initramfs import RECIPE as INITRAMFS_RECIPE
from lab.artifacts.initramfs import build_initramfs
from lab.artifacts.kconfig import (
    ConfigError,
    fragment_text,
    kconfig_dependencies,
    known_options,
    mismatches,
    parse_config,
    requested,
)
from lab.core.cache import BUILD_PREFIX, Cache, content_key, tree_digest
from lab.core.errors import MissingPrerequisite, UsageError
from lab.core.files import copy_file
from lab.core.proc import capture, run_logged
from lab.core.progress import Progress
from lab.model.arches import Arch, host_arch
from lab.model.kernelspec import CellConfig

# Lines of `make` output worth showing as progress: links and the final image.
_BUILD_PROGRESS = re.compile(
    r"^\s+(LD|AR)\s+(vmlinux|arch/\w+/boot/\w*Image)\b|Kernel: .* is ready"
)


@dataclass(frozen=True)
class SourceTree:
    identity: str  # e.g. linux-source-7.2=7.2.13-1, or a commit plus a diff hash
    path: Path
    owned: bool = False  # the lab's own copy (a cache entry), not a developer's checkout
    # What the merged .config depends on: the identity, less edits that touch no Kconfig
    # (a one-line .c change must not cost a config merge).
    kconfig_identity: str = ""

    @property
    def config_identity(self) -> str:
        return self.kconfig_identity or self.identity


@dataclass(frozen=True)
class BuiltKernel:
    release: str
    image: Path  # what QEMU's -kernel boots: bzImage, arm64's Image
    vmlinux: Path
    config: Path


def cross_compile(arch: Arch) -> str:
    """CROSS_COMPILE= for a kernel of `arch` built on this host: empty for its own arch."""
    return arch.cross_compile(host_arch())


@functools.cache
def compiler_identity(cross: str = "") -> str:
    """The first line of --version of the compiler for CROSS_COMPILE=`cross`, asked once
    per process: every kernel key and merge memo names it."""
    gcc = f"{cross}gcc"
    if shutil.which(gcc) is None:
        package = f"gcc-{cross.rstrip('-').replace('_', '-')}" if cross else "gcc"
        raise MissingPrerequisite(gcc, f"apt-get install {package}")
    return capture([gcc, "--version"], artifact="kernel").splitlines()[0]


def make_args(tree: SourceTree, build_dir: Path, arch: Arch) -> list[str | Path]:
    """`make` of `tree` into `build_dir` for a kernel of `arch` (cross on another host)."""
    return ["make", "-C", tree.path, f"O={build_dir}", *arch.kbuild_args(host_arch())]


class UnknownOption(UsageError):
    def __init__(self, option: str, tree: SourceTree) -> None:
        self.option = option
        super().__init__(f"{option} is not an option of {tree.identity} (no Kconfig defines it)")


def check_options_exist(tree: SourceTree, cfg: CellConfig) -> None:
    known = known_options(tree.path)
    for name, _ in cfg.overrides:
        if f"CONFIG_{name.removeprefix('CONFIG_')}" not in known:
            raise UnknownOption(name, tree)


def merge_config(
    tree: SourceTree, cfg: CellConfig, arch: Arch, build_dir: Path, fragment: Path, log: Path
) -> dict[str, str]:
    """tinyconfig + fragments via the tree's own merge_config.sh, then olddefconfig; verified."""
    wanted = requested(cfg.fragments, dict(cfg.overrides), arch.name)
    fragment.write_text(fragment_text(wanted))
    make = make_args(tree, build_dir, arch)
    run_logged([*make, "tinyconfig"], artifact="kernel config", log=log)
    merge = tree.path / "scripts" / "kconfig" / "merge_config.sh"
    run_logged(
        ["sh", merge, "-m", "-O", build_dir, build_dir / ".config", fragment],
        artifact="kernel config",
        log=log,
    )
    run_logged([*make, "olddefconfig"], artifact="kernel config", log=log)
    final = parse_config((build_dir / ".config").read_text())
    # The lab's fragments span kernel versions: an option this tree's Kconfig does not
    # define (gone, like PROC_SYSCTL in 7.3, or not yet there) is no refusal. A cell's own
    # config: options are checked against the tree before this (UnknownOption, exit 2).
    known = known_options(tree.path)
    absent = sorted(o for o in wanted if o not in known)
    if absent:
        with log.open("a") as out:
            out.write(f"# not options of {tree.identity}, left out: {' '.join(absent)}\n")
    missing = [o for o, v in wanted.items() if o in known and final.get(o, "n") != v]
    if missing:
        raise ConfigError(mismatches(wanted, final, kconfig_dependencies(tree.path, missing)))
    return final


def wanted_text(cfg: CellConfig, arch: Arch) -> str:
    """The requested config of a cell of `arch`, as one fragment: what identifies its build
    directory and its merge."""
    return fragment_text(requested(cfg.fragments, dict(cfg.overrides), arch.name))


def describe_config(cfg: CellConfig, arch: Arch) -> str:
    """A cell's config in a few words, for what a cache entry says it is (and for which
    arch, where that is not x86_64, whose entries were made before arches were named)."""
    asked = [*cfg.fragments, *(f"{k}={v}" for k, v in cfg.overrides)]
    config = f"config {' '.join(asked)}" if asked else "the lab's config"
    return " ".join([config, *(f"for {name}" for name in arch.key())])


def build_dir_for(tree: SourceTree, wanted: str, arch: Arch) -> Path:
    """One persistent build directory per tree and requested config, kept across edits of
    the tree, so that a one-line change recompiles one object and relinks, and switching
    between a scenario's configs rebuilds nothing (Kbuild's fixdep knows which objects
    each option touches; a shared directory would rebuild on every switch).

    It is a direct subdirectory of the tree: kbuild then names every source `../...`,
    so compiler command lines are the same in every copy of a tree (a patched copy, a
    second checkout) and ccache serves them. In a developer's checkout it carries a
    `.gitignore` of `*`, so `git status`, and with it the tree's identity, ignore it."""
    build_dir = build_dir_path(tree, wanted, arch)
    build_dir.mkdir(parents=True, exist_ok=True)
    if not tree.owned:
        (build_dir / ".gitignore").write_text("*\n")
    return build_dir


def build_dir_path(tree: SourceTree, wanted: str, arch: Arch) -> Path:
    """Where build_dir_for puts the build directory, made or not: one per arch too, since
    kbuild's objects are the arch's."""
    return tree.path / f"{BUILD_PREFIX}-{content_key([wanted, *arch.key()])[:8]}"


def config_digest(build_dir: Path) -> str:
    return hashlib.sha256((build_dir / ".config").read_bytes()).hexdigest()


def build_key(tree: SourceTree, config_sha256: str, arch: Arch, busybox: Busybox) -> str:
    return content_key(
        [
            "source-build",
            tree.identity,
            config_sha256,
            compiler_identity(cross_compile(arch)),
            tree_digest(INITRAMFS_RECIPE),
            *busybox.key(),
            *arch.key(),
        ]
    )


def compile_kernel(
    tree: SourceTree, build_dir: Path, arch: Arch, cache: Cache, log: Path, progress: Progress
) -> BuiltKernel:
    jobs = os.cpu_count() or 1
    env = dict(os.environ, CCACHE_DIR=str(cache.root / "ccache"), CCACHE_BASEDIR=str(tree.path))
    make = make_args(tree, build_dir, arch)
    argv = [*make, f"-j{jobs}", f"CC=ccache {cross_compile(arch)}gcc", arch.image]
    progress("kernel", f"building {tree.identity} with {jobs} jobs (ccache); log: {log}")
    run_logged(argv, artifact="kernel", log=log, on_line=BuildProgress(progress), env=env)
    release = capture([*make, "-s", "kernelrelease"], artifact="kernel")
    return BuiltKernel(
        release=release.strip().splitlines()[-1],
        image=build_dir / arch.image_path,
        vmlinux=build_dir / "vmlinux",
        config=build_dir / ".config",
    )


class BuildProgress:
    """Turns make's output into a few progress lines: a count of compiled files, the links."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.compiled = 0

    def __call__(self, line: str) -> None:
        if line.lstrip().startswith("CC "):
            self.compiled += 1
            if self.compiled % 200 == 0:
                self.progress("kernel", f"{self.compiled} files compiled")
        elif _BUILD_PROGRESS.search(line):
            self.progress("kernel", line.strip())


def store_artifact(built: BuiltKernel, scratch: Path) -> None:
    """Copy what a cell (and gdb) needs out of the build directory into the cache entry:
    reflinks at best, never hard links, since the next build in that directory may write
    its outputs in place (kconfig's .config, the bzImage tools)."""
    copy_file(built.image, scratch / "vmlinuz")
    copy_file(built.vmlinux, scratch / "vmlinux")
    copy_file(built.config, scratch / "config")


def build_initramfs_builtin(release: str, out: Path, log: Path, busybox: Path) -> None:
    """Everything is built in: an initramfs with no modules, only /init and busybox."""
    build_initramfs(None, release, out, log, busybox)
