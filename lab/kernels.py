"""Kernel sources (a registry) and the artifacts they produce for a cell.

A spec is written `SOURCE[:ARG]` in a scenario's `kernels:` list.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

from lab.cache import Cache, content_key, file_sha256, tree_digest
from lab.errors import BuildError, MissingPrerequisite, UsageError
from lab.initramfs import RECIPE as INITRAMFS_RECIPE
from lab.initramfs import build_initramfs
from lab.proc import capture, run_logged
from lab.progress import SILENT, Progress
from lab.registry import Registry


@dataclass(frozen=True)
class KernelSpec:
    source: str
    arg: str

    @property
    def label(self) -> str:
        return f"{self.source}:{self.arg}" if self.arg else self.source


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

    def save(self, path: Path) -> None:
        data = {k: str(v) for k, v in asdict(self).items()}
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
        d = json.loads(path.read_text())
        return cls(
            spec=d["spec"],
            release=d["release"],
            identity=d["identity"],
            vmlinuz=Path(d["vmlinuz"]),
            initramfs=Path(d["initramfs"]),
            vmlinuz_sha256=d["vmlinuz_sha256"],
            resolved_spec=d.get("resolved_spec", d["spec"]),
        )


class KernelSource:
    name: ClassVar[str]
    doc: ClassVar[str]

    def check_arg(self, arg: str) -> None:
        """Raise UsageError when `arg` is not valid for this source."""

    def prepare(
        self, spec: KernelSpec, cache: Cache, progress: Progress = SILENT
    ) -> KernelArtifact:
        raise NotImplementedError


_DEB_PKG = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
_DEB_VERSION = re.compile(r"^[0-9A-Za-z.+~:-]+$")


class DebianStock(KernelSource):
    """Debian's own kernel image package, as the host's apt sources serve it."""

    name = "debian-stock"
    doc = "the stock Debian kernel (ARG: image package[=version], default linux-image-amd64)"
    default_package = "linux-image-amd64"

    def check_arg(self, arg: str) -> None:
        package, eq, version = arg.partition("=")
        if (package and not _DEB_PKG.match(package)) or (eq and not _DEB_VERSION.match(version)):
            raise UsageError(f"{arg!r} is not a Debian package name, optionally with =version")

    def prepare(
        self, spec: KernelSpec, cache: Cache, progress: Progress = SILENT
    ) -> KernelArtifact:
        package, _, pinned = spec.arg.partition("=")
        if pinned:
            version = pinned
        else:
            package, version = resolve_debian_image(package or self.default_package)
        key = content_key([self.name, package, version, tree_digest(INITRAMFS_RECIPE)])
        entry = cache.entry("kernels", key)
        with cache.lock(f"kernel-{key}"):
            if not (entry / "artifact.json").exists():
                progress("kernel", f"fetching {package} {version} (cache key {key})")
                with cache.build("kernels", key) as scratch:
                    self._build(spec, package, version, scratch, entry)
        # The pin is known here whatever wrote the cache entry, so repro can always name it.
        artifact = KernelArtifact.load(entry / "artifact.json")
        return dataclasses.replace(artifact, resolved_spec=f"{self.name}:{package}={version}")

    def _build(
        self, spec: KernelSpec, package: str, version: str, scratch: Path, entry: Path
    ) -> None:
        log = scratch / "build.log"
        run_logged(
            ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{package}={version}"],
            artifact="kernel",
            log=log,
            cwd=scratch,
        )
        (deb,) = scratch.glob("*.deb")
        tree = scratch / "tree"
        run_logged(["dpkg-deb", "-x", deb, tree], artifact="kernel", log=log)
        deb.unlink()
        (vmlinuz,) = (tree / "boot").glob("vmlinuz-*")
        release = vmlinuz.name.removeprefix("vmlinuz-")
        vmlinuz.rename(scratch / "vmlinuz")
        build_initramfs(tree, release, scratch / "initramfs.cpio", log)
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


def resolve_debian_image(package: str) -> tuple[str, str]:
    """Follow a meta package (linux-image-amd64) to the concrete image package and version."""
    try:
        policy = capture(["apt-cache", "policy", package], artifact="kernel")
    except BuildError:
        raise MissingPrerequisite("apt-cache", "apt-get install apt") from None
    candidate = re.search(r"Candidate:\s*(\S+)", policy)
    if not candidate or candidate.group(1) == "(none)":
        raise MissingPrerequisite(
            f"Debian package {package} in the apt lists", "apt-get update (see `vfio-lab doctor`)"
        )
    depends = capture(
        ["apt-cache", "depends", f"{package}={candidate.group(1)}"], artifact="kernel"
    )
    concrete = re.search(r"Depends:\s*(linux-image-\S+)", depends)
    if not concrete:
        return package, candidate.group(1)
    return resolve_debian_image(concrete.group(1))


KERNEL_SOURCES: Registry[KernelSource] = Registry(
    "kernel source", {s.name: s() for s in (DebianStock,)}
)


def parse_kernel_spec(text: str) -> KernelSpec:
    source, _, arg = text.partition(":")
    KERNEL_SOURCES[source].check_arg(arg)
    return KernelSpec(source=source, arg=arg)
