"""Patches on source trees: the lab's QEMU series, and a scenario's patches on a kernel.

A patched kernel tree is a cache entry of its own, keyed by the pristine tree and the
patches' contents. It is a hard-linked copy of the pristine tree: `patch` writes each
file it changes anew, so the pristine tree never changes, and the copy costs only the
files the patches touch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lab.artifacts.kbuild import SourceTree
from lab.core.cache import BUILD_PREFIX, Cache, content_key, file_sha256
from lab.core.errors import BuildError
from lab.core.proc import run_logged
from lab.core.progress import Progress

PATCH = ("patch", "-p1", "--forward", "--batch")


def apply_patches(
    patches: Sequence[Path], tree: Path, artifact: str, log: Path, progress: Progress
) -> None:
    """Apply `patches` in order with `patch -p1`; one that does not apply is named."""
    for patch in patches:
        progress(artifact, f"applying {patch.name}")
        try:
            run_logged(
                [*PATCH, "--no-backup-if-mismatch", "-i", patch],
                artifact=artifact,
                log=log,
                cwd=tree,
            )
        except BuildError as e:
            raise BuildError(artifact, f"patch {patch} does not apply", e.log_tail) from None


def applies_exactly(patch: Path, tree: Path, artifact: str, log: Path) -> bool:
    """Whether `patch` applies to `tree` as it is, without fuzz (a dry run)."""
    try:
        run_logged(
            [*PATCH, "--dry-run", "--fuzz=0", "-s", "-i", patch],
            artifact=artifact,
            log=log,
            cwd=tree,
        )
    except BuildError:
        return False
    return True


def patches_digest(patches: Sequence[Path]) -> str:
    return content_key([file_sha256(p) for p in patches])


def patched_tree(
    tree: SourceTree,
    patches: Sequence[Path],
    cache: Cache,
    progress: Progress,
    artifact: str = "kernel",
) -> SourceTree:
    """`tree` with `patches` applied, built once per (tree, patch contents) and cached;
    `artifact` names whose patches they are in progress lines and errors."""
    identity = f"{tree.identity}+patches:{patches_digest(patches)}"
    key = content_key(["patched-source", identity])
    entry = cache.entry("src", key)

    def build(scratch: Path) -> None:
        progress(artifact, f"patching {tree.identity} with {len(patches)} patch(es)")
        copy = scratch / "linux"
        copy.mkdir()
        for child in tree.path.iterdir():
            if not child.name.startswith(BUILD_PREFIX):
                run_logged(["cp", "-al", child, copy], artifact=artifact, log=scratch / "patch.log")
        apply_patches(patches, copy, artifact, scratch / "patch.log", progress)

    with cache.lock(f"src-{key}"):
        names = " ".join(p.name for p in patches)
        cache.ensure("src", key, build, progress, made_by=f"{tree.identity} with {names}")
    return SourceTree(identity=identity, path=entry / "linux", owned=True)
