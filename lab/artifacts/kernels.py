"""Kernel builders, one per kernel source, and the artifacts they produce for a cell.

A spec is written `SOURCE[:ARG]` in a scenario's `kernels:` list (lab.model.kernelspec).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lab.artifacts.apt import SUITES, PrivateApt, arch_apt, host_apt_state
from lab.artifacts.busybox import Busybox, busybox_for
from lab.artifacts.initramfs import RECIPE as INITRAMFS_RECIPE
from lab.artifacts.initramfs import build_initramfs
from lab.artifacts.kbuild import (
    SourceTree,
    build_dir_for,
    build_dir_path,
    build_initramfs_builtin,
    build_key,
    check_options_exist,
    compile_kernel,
    compiler_identity,
    config_digest,
    cross_compile,
    describe_config,
    merge_config,
    store_artifact,
    wanted_text,
)
from lab.artifacts.patches import patched_tree
from lab.artifacts.pvh import built_pvh_elf, pvh_image
from lab.artifacts.worktree import tree_state
from lab.core.cache import (
    Cache,
    CorruptCacheFile,
    content_key,
    file_sha256,
    record_made_by,
    tree_digest,
)
from lab.core.errors import BuildError, MissingPrerequisite
from lab.core.files import copy_file
from lab.core.proc import capture, run_logged
from lab.core.progress import SILENT, Progress
from lab.core.registry import Registry
from lab.model.arches import Arch
from lab.model.kernelspec import (
    DEBIAN_SERIES,
    NO_CONFIG,
    CellConfig,
    DebianSourceKind,
    DebianStockKind,
    KernelSourceKind,
    KernelSpec,
    LocalTreeKind,
    SpecError,
)
from lab.model.variants import model_modules


@dataclass(frozen=True)
class KernelArtifact:
    """A bootable kernel: what a cell needs, and what identifies it for provenance."""

    spec: str
    release: str  # `uname -r` in the guest
    identity: str  # e.g. the Debian package and version
    vmlinuz: Path
    initramfs: Path
    vmlinuz_sha256: str
    resolved_spec: str = ""  # a spec that names exactly this kernel again (for repro)
    build_s: float | None = None  # wall time of the build that made it (None: fetched)
    pvh_elf: Path | None = None  # the same kernel as an ELF QEMU enters through PVH

    @property
    def boot_image(self) -> Path:
        """What QEMU's -kernel loads: the PVH ELF where there is one (no unpacking)."""
        return self.pvh_elf or self.vmlinuz

    @property
    def config(self) -> Path:
        """The kernel's .config, beside the image."""
        return self.vmlinuz.parent / "config"

    def save(self, path: Path) -> None:
        # The PVH ELF is derived from the image where it is used, and cached on its own.
        fields = {k: v for k, v in asdict(self).items() if k != "pvh_elf"}
        data = {k: str(v) if isinstance(v, Path) else v for k, v in fields.items()}
        path.write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def placeholder(cls, spec: str) -> KernelArtifact:
        """Stands in for an artifact not built yet, in `--dry-run` output."""
        root = Path(f"<kernel {spec}>")
        return cls(
            spec, "<release>", "<identity>", root / "vmlinuz", root / "initramfs.cpio", "", spec
        )

    @classmethod
    def load(cls, path: Path) -> KernelArtifact:
        """Read an artifact.json back; a damaged one is an infrastructure error naming the
        file (the cache is the lab's own state), not a traceback."""
        try:
            d = json.loads(path.read_text())
            return cls(
                spec=d["spec"],
                release=d["release"],
                identity=d["identity"],
                vmlinuz=Path(d["vmlinuz"]),
                initramfs=Path(d["initramfs"]),
                vmlinuz_sha256=d["vmlinuz_sha256"],
                resolved_spec=d.get("resolved_spec", d["spec"]),
                build_s=d.get("build_s"),
            )
        except KeyError as e:
            raise CorruptCacheFile(path, f"no {e.args[0]!r} field") from e
        except (OSError, ValueError, TypeError, AttributeError) as e:
            # ValueError covers bad JSON and bad UTF-8; TypeError and AttributeError a
            # document that is not an object, or fields of the wrong type.
            raise CorruptCacheFile(path, str(e) or type(e).__name__) from e


class KernelBuilder(KernelSourceKind):
    """Provides the kernel a spec of its source names, for a guest arch: fetched, or built
    and cached."""

    def resolved(
        self, spec: KernelSpec, arch: Arch, cache: Cache, progress: Progress = SILENT
    ) -> str:
        """What the spec names now (a package version, a commit), found without fetching or
        building anything: what a CI cache is keyed by."""
        raise NotImplementedError

    def source_tree(
        self, spec: KernelSpec, arch: Arch, cache: Cache, progress: Progress
    ) -> SourceTree:
        """The kernel's source tree, patches applied (what its C selftests build from)."""
        raise NotImplementedError

    def prepare(
        self,
        spec: KernelSpec,
        arch: Arch,
        cache: Cache,
        progress: Progress = SILENT,
        cfg: CellConfig = NO_CONFIG,
    ) -> KernelArtifact:
        raise NotImplementedError


class DebianStock(DebianStockKind, KernelBuilder):
    """Debian's own kernel image package: for the host's arch as the host's apt sources
    serve it, for another from the lab's private apt setup listing that arch."""

    def source_tree(
        self, spec: KernelSpec, arch: Arch, cache: Cache, progress: Progress
    ) -> SourceTree:
        """Debian's linux-source of the image's series (the selftests of 6.1 for 6.1)."""
        package, _ = self._package(spec, arch, cache, progress)
        series = re.match(r"linux-image-(\d+\.\d+)", package)
        if series is None:
            raise SpecError(f"{package}: cannot tell which linux-source-X.Y it was built from")
        source = KernelSpec(DebianSourceKind.name, series.group(1))
        return KERNEL_BUILDERS[source.source].source_tree(source, arch, cache, progress)

    def resolved(
        self, spec: KernelSpec, arch: Arch, cache: Cache, progress: Progress = SILENT
    ) -> str:
        return "=".join(self._package(spec, arch, cache, progress))

    def _package(
        self, spec: KernelSpec, arch: Arch, cache: Cache, progress: Progress
    ) -> tuple[str, str]:
        package, _, pinned = spec.arg.partition("=")
        if pinned:
            return package, pinned
        default = f"linux-image-{arch.debian}"
        return resolved_image(package or default, cache, arch_apt(arch, cache, progress))

    def prepare(
        self,
        spec: KernelSpec,
        arch: Arch,
        cache: Cache,
        progress: Progress = SILENT,
        cfg: CellConfig = NO_CONFIG,
    ) -> KernelArtifact:
        package, version = self._package(spec, arch, cache, progress)
        busybox = busybox_for(arch, cache, progress)
        key = stock_key(package, version, arch, busybox)
        entry = cache.entry("kernels", key)

        def fetch(scratch: Path) -> None:
            progress("kernel", f"fetching {package} {version} (cache key {key})")
            path = busybox.provide(progress)
            self._build(spec, package, version, arch, path, cache, scratch, entry)

        with cache.lock(f"kernel-{key}"):
            cache.ensure(
                "kernels",
                key,
                fetch,
                progress,
                made_by=f"kernel {self.name}:{package}={version}",
                legacy="artifact.json",
            )
        # The pin is known here whatever wrote the cache entry, so repro can always name it.
        artifact = KernelArtifact.load(entry / "artifact.json")
        elf = pvh_image(artifact.vmlinuz, artifact.vmlinuz_sha256, artifact.config, cache)
        return dataclasses.replace(
            artifact, resolved_spec=f"{self.name}:{package}={version}", pvh_elf=elf
        )

    def _build(
        self,
        spec: KernelSpec,
        package: str,
        version: str,
        arch: Arch,
        busybox: Path,
        cache: Cache,
        scratch: Path,
        entry: Path,
    ) -> None:
        log = scratch / "build.log"
        apt = arch_apt(arch, cache, SILENT)
        if apt is None:
            run_logged(
                ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root",
                 f"{package}={version}"],
                artifact="kernel",
                log=log,
                cwd=scratch,
            )  # fmt: skip
            (deb,) = scratch.glob("*.deb")
        else:
            deb = apt.download(package, version, scratch)
        tree = scratch / "tree"
        run_logged(["dpkg-deb", "-x", deb, tree], artifact="kernel", log=log)
        deb.unlink()
        (vmlinuz,) = (tree / "boot").glob("vmlinuz-*")
        release = vmlinuz.name.removeprefix("vmlinuz-")
        vmlinuz.rename(scratch / "vmlinuz")
        modules = model_modules(arch.name)
        build_initramfs(tree, release, scratch / "initramfs.cpio", log, busybox, modules)
        (tree / "boot").joinpath(f"config-{release}").rename(scratch / "config")
        shutil.rmtree(tree)
        KernelArtifact(
            spec=spec.label,
            release=release,
            identity=f"{package}={version}",
            vmlinuz=entry / "vmlinuz",
            initramfs=entry / "initramfs.cpio",
            vmlinuz_sha256=file_sha256(scratch / "vmlinuz"),
        ).save(scratch / "artifact.json")


def stock_key(package: str, version: str, arch: Arch, busybox: Busybox) -> str:
    """A Debian image's cache entry: the package, its version, and the initramfs made for it
    (its recipe and busybox, the IOMMU modules of the arch's models)."""
    modules = model_modules(arch.name)
    initramfs = [tree_digest(INITRAMFS_RECIPE), *busybox.key()]
    return content_key([DebianStock.name, package, version, *initramfs, *modules, *arch.key()])


def resolved_image(package: str, cache: Cache, apt: PrivateApt | None) -> tuple[str, str]:
    """resolve_debian_image, asked again only when the apt state it asks changed: the
    host's (`apt` None) or the private setup's."""
    state, options = (host_apt_state(), []) if apt is None else (apt.state(), apt.options())
    answer = cache.memo(
        ["debian-image", package, *state],
        lambda: "=".join(resolve_debian_image(package, options)),
    )
    concrete, _, version = answer.partition("=")
    return concrete, version


def resolve_debian_image(package: str, options: list[str]) -> tuple[str, str]:
    """Follow a meta package (linux-image-amd64) to the concrete image package and version;
    `options` point apt-cache at a private setup."""
    try:
        policy = capture(["apt-cache", *options, "policy", package], artifact="kernel")
    except BuildError:
        raise MissingPrerequisite("apt-cache", "apt-get install apt") from None
    candidate = re.search(r"Candidate:\s*(\S+)", policy)
    if not candidate or candidate.group(1) == "(none)":
        raise MissingPrerequisite(
            f"Debian package {package} in the apt lists", "apt-get update (see `vfio-lab doctor`)"
        )
    depends = capture(
        ["apt-cache", *options, "depends", f"{package}={candidate.group(1)}"], artifact="kernel"
    )
    # A foreign arch's names come qualified (linux-image-6.1.0-50-arm64:arm64).
    concrete = re.search(r"Depends:\s*(linux-image-[^\s:]+)", depends)
    if not concrete:
        return package, candidate.group(1)
    return resolve_debian_image(concrete.group(1), options)


class SourceBuilt(KernelBuilder):
    """A kernel built from a source tree with the lab's config fragments."""

    def tree(self, spec: KernelSpec, cache: Cache, progress: Progress) -> SourceTree:
        raise NotImplementedError

    def pin(self, spec: KernelSpec, tree: SourceTree) -> str:
        """A spec that names exactly this tree again."""
        return spec.label

    def source_tree(
        self, spec: KernelSpec, arch: Arch, cache: Cache, progress: Progress
    ) -> SourceTree:
        return _with_patches(self.tree(spec, cache, progress), spec, cache, progress)

    def prepare(
        self,
        spec: KernelSpec,
        arch: Arch,
        cache: Cache,
        progress: Progress = SILENT,
        cfg: CellConfig = NO_CONFIG,
    ) -> KernelArtifact:
        pristine = self.tree(spec, cache, progress)
        tree = _with_patches(pristine, spec, cache, progress)
        wanted = wanted_text(cfg, arch)
        # A warm run asks the merge's answer of the memo, and merges (seconds of make)
        # only for a kernel it has to build.
        compiler = compiler_identity(cross_compile(arch))
        merged = ["merged-config", tree.config_identity, wanted, compiler, *arch.key()]
        known = cache.recall(merged)
        busybox = busybox_for(arch, cache, progress)
        key = build_key(tree, known, arch, busybox) if known is not None else None
        made_by = _made_by(spec, tree, cfg, arch)
        if key is None or not cache.complete("kernels", key, made_by):
            known = self._merge_and_build(
                spec, tree, cfg, arch, wanted, busybox, cache, progress, known
            )
            cache.remember(merged, known)
            key = build_key(tree, known, arch, busybox)
        artifact = KernelArtifact.load(cache.entry("kernels", key) / "artifact.json")
        return dataclasses.replace(
            artifact,
            resolved_spec=self.pin(spec, pristine),
            pvh_elf=built_pvh_elf(artifact.vmlinuz, artifact.config),
        )

    def _merge_and_build(
        self,
        spec: KernelSpec,
        tree: SourceTree,
        cfg: CellConfig,
        arch: Arch,
        wanted: str,
        busybox: Busybox,
        cache: Cache,
        progress: Progress,
        known: str | None = None,
    ) -> str:
        """Merge the cell's config in its build directory and build it unless cached;
        returns the merged .config's sha256. `known` is what the merge gave for this
        tree's Kconfig and this config before: a build directory that still holds it (an
        edit of the tree that touched no Kconfig) builds without merging again."""
        # A build already uses every core: one merge-and-build at a time, across cells and
        # processes.
        with cache.lock("kernel-build"), cache.scratch("kbuild-") as tmp:
            if not tree.owned:  # in a developer's checkout: an entry of its own
                cache.use_local_build(tree.path, build_dir_path(tree, wanted, arch))
            build_dir = build_dir_for(tree, wanted, arch)
            record_made_by(
                build_dir, f"build directory of {spec.label} ({describe_config(cfg, arch)})"
            )
            log = tmp / "build.log"
            merged = (build_dir / ".config").exists() and config_digest(build_dir) == known
            if not merged:
                check_options_exist(tree, cfg)
                merge_config(tree, cfg, arch, build_dir, tmp / "cell.config", log)
            digest = config_digest(build_dir)
            key = build_key(tree, digest, arch, busybox)
            entry = cache.entry("kernels", key)
            # "kernel-build" covers every source-built entry: ensure runs under it.
            cache.ensure(
                "kernels",
                key,
                lambda scratch: self._build(
                    spec, tree, arch, busybox, build_dir, log, cache, scratch, entry, progress
                ),
                progress,
                made_by=_made_by(spec, tree, cfg, arch),
                legacy="artifact.json",
            )
        return digest

    def _build(
        self,
        spec: KernelSpec,
        tree: SourceTree,
        arch: Arch,
        busybox: Busybox,
        build_dir: Path,
        log: Path,
        cache: Cache,
        scratch: Path,
        entry: Path,
        progress: Progress,
    ) -> None:
        started = time.monotonic()
        built = compile_kernel(tree, build_dir, arch, cache, log, progress)
        store_artifact(built, scratch)
        initramfs = scratch / "initramfs.cpio"
        build_initramfs_builtin(built.release, initramfs, log, busybox.provide(progress))
        seconds = round(time.monotonic() - started, 1)
        progress("kernel", f"built {built.release} in {seconds:.0f} s")
        copy_file(log, scratch / "build.log")  # the log goes on: the next build appends
        KernelArtifact(
            spec=spec.label,
            release=built.release,
            identity=tree.identity,
            vmlinuz=entry / "vmlinuz",
            initramfs=entry / "initramfs.cpio",
            vmlinuz_sha256=file_sha256(scratch / "vmlinuz"),
            build_s=seconds,
        ).save(scratch / "artifact.json")


def _made_by(spec: KernelSpec, tree: SourceTree, cfg: CellConfig, arch: Arch) -> str:
    return f"kernel {spec.label} ({tree.identity}; {describe_config(cfg, arch)})"


def _with_patches(
    pristine: SourceTree, spec: KernelSpec, cache: Cache, progress: Progress
) -> SourceTree:
    return patched_tree(pristine, spec.patches, cache, progress) if spec.patches else pristine


class DebianSource(DebianSourceKind, SourceBuilt):
    """Debian's linux-source-X.Y package, from bookworm, trixie-backports or sid."""

    def _version(self, spec: KernelSpec, cache: Cache, progress: Progress) -> tuple[str, str]:
        """(linux-source-X.Y, the version the spec names or apt would fetch)."""
        m = DEBIAN_SERIES.match(spec.arg)
        assert m is not None
        series, pinned = m.group(1), m.group(2)
        package = f"linux-source-{series}"
        apt = PrivateApt(cache)
        apt.update(progress)
        version = pinned or apt.candidate(package)
        if version is None:
            raise SpecError(f"{apt.mirror} serves no {package} in {', '.join(SUITES)}")
        return package, version

    def resolved(
        self, spec: KernelSpec, arch: Arch, cache: Cache, progress: Progress = SILENT
    ) -> str:
        return "=".join(self._version(spec, cache, progress))

    def tree(self, spec: KernelSpec, cache: Cache, progress: Progress) -> SourceTree:
        package, version = self._version(spec, cache, progress)
        series = package.removeprefix("linux-source-")
        apt = PrivateApt(cache)
        key = content_key(["debian-source", package, version])
        entry = cache.entry("src", key)

        def unpack(scratch: Path) -> None:
            progress("kernel", f"fetching and unpacking {package} {version}")
            _unpack_source(apt, package, version, series, scratch)

        with cache.lock(f"src-{key}"):
            cache.ensure(
                "src", key, unpack, progress, made_by=f"source {package}={version}", legacy="linux"
            )
        return SourceTree(identity=f"{package}={version}", path=entry / "linux", owned=True)

    def pin(self, spec: KernelSpec, tree: SourceTree) -> str:
        return f"{self.name}:{spec.arg.partition('=')[0]}={tree.identity.partition('=')[2]}"


def _unpack_source(apt: PrivateApt, package: str, version: str, series: str, scratch: Path) -> None:
    deb = apt.download(package, version, scratch)
    log = scratch / "unpack.log"
    run_logged(["dpkg-deb", "-x", deb, scratch / "deb"], artifact=package, log=log)
    tarball = scratch / "deb" / "usr" / "src" / f"linux-source-{series}.tar.xz"
    run_logged(["tar", "-xJf", tarball, "-C", scratch], artifact=package, log=log)
    (scratch / f"linux-source-{series}").rename(scratch / "linux")
    shutil.rmtree(scratch / "deb")
    deb.unlink()


class LocalTree(LocalTreeKind, SourceBuilt):
    """A developer's own kernel checkout, built out of tree (O=) in a git-ignored build
    directory inside it that persists across edits (see kbuild.build_dir_for)."""

    def resolved(
        self, spec: KernelSpec, arch: Arch, cache: Cache, progress: Progress = SILENT
    ) -> str:
        return self.tree(spec, cache, progress).identity

    def tree(self, spec: KernelSpec, cache: Cache, progress: Progress) -> SourceTree:
        path = Path(spec.arg)
        try:
            state = tree_state(path)
        except BuildError:
            raise SpecError(
                f"local:{spec.arg} is not a git checkout; its identity is its commit"
            ) from None
        return SourceTree(
            identity=state.identity(),
            path=path,
            kconfig_identity=state.identity(only=KCONFIG_FILE.search),
        )


# What a merged .config can depend on in a tree: its Kconfig files and config fragments.
KCONFIG_FILE = re.compile(r"(^|/)(Kconfig[^/]*|[^/]*\.config)$")


# One builder per source of lab.model.kernelspec.KERNEL_SOURCES (a unit test keeps them in step).
KERNEL_BUILDERS: Registry[KernelBuilder] = Registry(
    "kernel source", {b.name: b() for b in (DebianStock, DebianSource, LocalTree)}
)
