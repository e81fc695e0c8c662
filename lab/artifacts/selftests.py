"""The kernel's own C selftests, built on the host from a cell's kernel tree.

A suite (`kselftest-vfio`, `kselftest-iommu`) is built from the very tree its cell's
kernel came from, against that tree's uAPI headers (`make headers` with O=), out of
tree (`OUTPUT=`), so the tree stays as it was. It is cached by the tree's identity, the
lab's patches for it and the compiler.

For a guest of another arch than the host's it is cross-built (kbuild's ARCH= and
CROSS_COMPILE=), against that arch's libuuid and libcap unpacked into a sysroot
(lab.artifacts.sysroot), and linked statically: the programs then need nothing of the
guest's root filesystem. Its key adds the arch and the sysroot's packages.

The payload's own programs (suite `programs`) are not built here: they are the
executables the user put in the payload's `programs/`, run the same way.

Patches come per suite from `images/selftests/<dir>/series`, one per line:
`lab NAME` always applies (e.g. the lab's edu driver for the VFIO library); `compat
NAME` is a build fix some trees need (its header says which). A suite is first built
with the `lab` patches only; only if that fails are the `compat` patches added, and
the build says which it needed. A line may name several versions of one patch, for
trees whose context differs (`lab A.patch B.patch`): the first that applies is used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lab.artifacts.kbuild import SourceTree, compiler_identity
from lab.artifacts.patches import applies_exactly, patched_tree, patches_digest
from lab.artifacts.sysroot import Sysroot, provide_sysroot
from lab.core.cache import Cache, CorruptCacheFile, content_key
from lab.core.data import IMAGES
from lab.core.errors import BuildError
from lab.core.proc import run_logged
from lab.core.progress import Progress
from lab.model.arches import Arch, host_arch
from lab.model.suites import Suite

SELFTESTS = IMAGES / "selftests"
KINDS = ("lab", "compat")
# What the suites link (kselftest-vfio -luuid, kselftest-iommu -lcap), the libraries with
# their headers, as scripts/setup-host.sh installs them for the host's own arch.
LIBRARIES = ("uuid-dev", "libuuid1", "libcap-dev", "libcap2")


@dataclass(frozen=True)
class SelftestBuild:
    """A suite's programs, ready to copy into a guest; or why there is nothing to run."""

    suite: str
    tree: str  # the identity of the tree it was built from
    bin: str = ""  # directory of the programs
    programs: tuple[str, ...] = ()
    patches: tuple[str, ...] = ()  # the lab's, applied
    compat: tuple[str, ...] = ()  # build fixes this tree needed
    absent: str = ""  # why the tree gives nothing to run
    build_s: float | None = None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> SelftestBuild:
        try:
            d = json.loads(path.read_text())
            fields: dict[str, Any] = {
                k: tuple(v) if isinstance(v, list) else v for k, v in d.items()
            }
            return cls(**fields)
        except (OSError, ValueError, TypeError) as e:
            raise CorruptCacheFile(path, str(e) or type(e).__name__) from e


@dataclass(frozen=True)
class SeriesEntry:
    kind: str  # lab | compat
    versions: tuple[Path, ...]  # one patch, for trees of different context


def series(suite: Suite, recipes: Path = SELFTESTS) -> list[SeriesEntry]:
    """The suite's series file, in order."""
    assert suite.selftest_dir is not None
    path = recipes / suite.selftest_dir / "series"
    if not path.is_file():
        return []
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) < 2 or words[0] not in KINDS:
            raise BuildError(
                "selftests", f"{path}:{number}: expected `lab NAME...` or `compat NAME...`"
            )
        out.append(SeriesEntry(words[0], tuple(path.parent / w for w in words[1:])))
    return out


def _version_for(tree: SourceTree, entry: SeriesEntry, log: Path) -> Path:
    """The first version of the patch that applies to `tree` exactly (no fuzz: a version
    for other context must not pass for this one); else the first, whose failure to
    apply is then reported with its name."""
    return next(
        (p for p in entry.versions if applies_exactly(p, tree.path, "selftests", log)),
        entry.versions[0],
    )


@dataclass(frozen=True)
class Target:
    """What the programs are built for, and on which host: the make arguments a cross
    build adds (none for a native one, whose commands are as they were)."""

    arch: Arch
    host: str
    sysroot: Sysroot | None  # the arch's libraries, for a cross build

    def kbuild_args(self) -> list[str]:
        return self.arch.kbuild_args(self.host)

    def link_args(self) -> list[str]:
        """lib.mk's USERCFLAGS and USERLDFLAGS (the suites' own Makefiles set CFLAGS, so
        a CFLAGS= of make's command line would replace theirs)."""
        if self.sysroot is None:
            return []
        return [
            f"USERCFLAGS=-isystem {self.sysroot.include}",
            f"USERLDFLAGS=-static -L{self.sysroot.lib}",
        ]


def selftests_key(
    suite: Suite, tree: SourceTree, patches: list[SeriesEntry], target: Target
) -> str:
    """A native build's key is as it was before the lab cross-built any; a cross build's
    adds its compiler, its arch and the sysroot's packages."""
    return content_key(
        [
            "selftests",
            suite.name,
            tree.identity,
            patches_digest([p for entry in patches for p in entry.versions]),
            compiler_identity(target.arch.cross_compile(target.host)),
            *target.arch.key(),
            *([target.sysroot.key] if target.sysroot else []),
        ]
    )


def target_for(arch: Arch, cache: Cache, progress: Progress) -> Target:
    """Building for `arch` on this host: with the arch's libraries when that is a cross
    build (the sysroot unpacked if the cache lacks it)."""
    host = host_arch()
    native = not arch.cross_compile(host)
    sysroot = None if native else provide_sysroot(LIBRARIES, arch, cache, progress)
    return Target(arch, host, sysroot)


def provide_selftests(
    suite: Suite,
    tree: SourceTree,
    arch: Arch,
    cache: Cache,
    progress: Progress,
    recipes: Path = SELFTESTS,
) -> SelftestBuild:
    patches = series(suite, recipes)
    target = target_for(arch, cache, progress)
    key = selftests_key(suite, tree, patches, target)
    entry = cache.entry("selftests", key)

    def build(scratch: Path) -> None:
        progress(suite.name, f"building from {tree.identity}")
        started = time.monotonic()
        built = _build(suite, tree, patches, target, cache, scratch, entry, progress)
        seconds = round(time.monotonic() - started, 1)
        progress(suite.name, f"built {len(built.programs)} programs in {seconds:.0f} s")
        dataclasses.replace(built, build_s=seconds).save(scratch / "selftests.json")

    with cache.lock(f"selftests-{key}"):
        cross = f" for {arch.name}" if target.sysroot else ""
        made_by = f"{suite.name} selftests from {tree.identity}{cross}"
        cache.ensure("selftests", key, build, progress, made_by=made_by)
    return SelftestBuild.load(entry / "selftests.json")


def _build(
    suite: Suite,
    tree: SourceTree,
    patches: list[SeriesEntry],
    target: Target,
    cache: Cache,
    scratch: Path,
    entry: Path,
    progress: Progress,
) -> SelftestBuild:
    assert suite.selftest_dir is not None
    where = Path("tools/testing/selftests") / suite.selftest_dir
    if not (tree.path / where).is_dir():
        return SelftestBuild(suite.name, tree.identity, absent=f"{tree.identity} has no {where}")
    log = scratch / "build.log"
    headers = _headers(tree, target, scratch, log)
    chosen = [(e.kind, _version_for(tree, e, log)) for e in patches]
    lab = [p for kind, p in chosen if kind == "lab"]
    compat: list[Path] = []
    try:
        _make(
            patched_tree(tree, lab, cache, progress, "selftests") if lab else tree,
            where,
            headers,
            target,
            scratch,
        )
    except BuildError:
        compat = [p for kind, p in chosen if kind == "compat"]
        if not compat:
            raise
        progress(suite.name, f"the build as shipped failed; adding {len(compat)} compat patch(es)")
        _make(
            patched_tree(tree, compat + lab, cache, progress, "selftests"),
            where,
            headers,
            target,
            scratch,
        )
    programs = _programs(scratch / "out")
    return SelftestBuild(
        suite.name,
        tree.identity,
        bin=str(entry / "out"),
        programs=programs,
        patches=tuple(p.name for p in lab),
        compat=tuple(p.name for p in compat),
    )


def headers_args(tree: SourceTree, target: Target, obj: Path) -> list[str | Path]:
    """`make headers` of the tree out of tree (O=), with the target arch's uAPI."""
    jobs = f"-j{os.cpu_count() or 1}"
    return ["make", "-C", tree.path, f"O={obj}", jobs, *target.kbuild_args(), "headers"]


def make_args(
    tree: SourceTree, where: Path, headers: Path, target: Target, out: Path
) -> list[str | Path]:
    """`make` of a suite of the tree into `out`, against the generated uAPI `headers`."""
    return [
        "make",
        "-C",
        tree.path / where,
        f"-j{os.cpu_count() or 1}",
        f"OUTPUT={out}",
        f"KHDR_INCLUDES=-isystem {headers}",
        *target.kbuild_args(),
        *target.link_args(),
    ]


def _headers(tree: SourceTree, target: Target, scratch: Path, log: Path) -> Path:
    obj = scratch / "obj"
    run_logged(headers_args(tree, target, obj), artifact="selftests", log=log)
    return obj / "usr" / "include"


def _make(tree: SourceTree, where: Path, headers: Path, target: Target, scratch: Path) -> None:
    out = scratch / "out"
    shutil.rmtree(out, ignore_errors=True)  # nothing of a failed attempt stays
    out.mkdir()
    run_logged(
        make_args(tree, where, headers, target, out),
        artifact="selftests",
        log=scratch / "build.log",
    )


def payload_programs(suite: Suite, payload: Path) -> SelftestBuild:
    """A suite of programs the user built (`programs_dir` of the payload), run as they are."""
    assert suite.programs_dir is not None
    where = payload / suite.programs_dir
    programs = _programs(where)
    if not programs:
        return SelftestBuild(suite.name, "payload", absent=f"{where} holds no executable")
    return SelftestBuild(suite.name, "payload", bin=str(where), programs=programs)


def _programs(out: Path) -> tuple[str, ...]:
    """The test programs the build produced: the executables at the top of its output."""
    return tuple(
        sorted(
            p.name
            for p in out.iterdir()
            if p.is_file() and p.stat().st_mode & stat.S_IXUSR and not p.suffix
        )
    )
