"""Build directories and the warm path of a source-built kernel: real git, no kernel build."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lab.artifacts import kernels
from lab.artifacts.busybox import Busybox, HostBusybox
from lab.artifacts.kbuild import SourceTree, build_dir_for, build_key
from lab.artifacts.kernels import KernelArtifact, LocalTree, SourceBuilt
from lab.core import cachegc
from lab.core.cache import BUILD_PREFIX, Cache
from lab.model.arches import ARCHES, Arch
from lab.model.kernelspec import CellConfig, KernelSpec

X86 = ARCHES["x86_64"]


def git(tree: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", tree, *args], check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    tree = tmp_path / "linux"
    (tree / "drivers" / "vfio").mkdir(parents=True)
    (tree / "drivers" / "vfio" / "Kconfig").write_text("config VFIO\n\tbool\n")
    (tree / "drivers" / "vfio" / "vfio_main.c").write_text("int x;\n")
    git(tree.parent, "init", "-q", tree.name)
    git(tree, "-c", "user.email=a@b", "-c", "user.name=a", "add", ".")
    git(tree, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "base")
    return tree


def local(tree: Path) -> SourceTree:
    return LocalTree().tree(KernelSpec("local", str(tree)), Cache(tree.parent / "c"), print)


def test_a_build_directory_per_config_kept_across_edits(checkout: Path) -> None:
    before = local(checkout)
    (checkout / "drivers" / "vfio" / "vfio_main.c").write_text("int x = 1;\n")
    after = local(checkout)
    assert before.identity != after.identity, "the edit is part of the kernel's identity"
    assert build_dir_for(before, "CONFIG_A=y\n", X86) == build_dir_for(after, "CONFIG_A=y\n", X86)
    assert build_dir_for(after, "CONFIG_A=y\n", X86) != build_dir_for(after, "CONFIG_A=n\n", X86)
    assert build_dir_for(after, "CONFIG_A=y\n", X86).parent == checkout
    assert build_dir_for(after, "CONFIG_A=y\n", X86).name.startswith(BUILD_PREFIX)


def test_the_build_directory_leaves_a_checkout_clean(checkout: Path) -> None:
    tree = local(checkout)
    (build_dir_for(tree, "CONFIG_A=y\n", X86) / "vmlinux").write_text("built")
    assert git(checkout, "status", "--porcelain") == ""
    assert local(checkout).identity == tree.identity


def test_only_kconfig_edits_change_what_the_merge_depends_on(checkout: Path) -> None:
    base = local(checkout)
    (checkout / "drivers" / "vfio" / "vfio_main.c").write_text("int x = 1;\n")
    code_edit = local(checkout)
    (checkout / "drivers" / "vfio" / "Kconfig").write_text("config VFIO\n\ttristate\n")
    kconfig_edit = local(checkout)
    assert code_edit.config_identity == base.config_identity
    assert kconfig_edit.config_identity != base.config_identity


class FixedTree(SourceBuilt):
    name = "fixed"

    def __init__(self, tree: SourceTree) -> None:
        self._tree = tree

    def tree(self, spec: KernelSpec, cache: Cache, progress: object) -> SourceTree:
        return self._tree


def test_a_warm_prepare_merges_nothing(tmp_path: Path, monkeypatch) -> None:
    """With the merge remembered and its kernel cached, prepare runs no make at all."""
    cache = Cache(tmp_path / "cache")
    tree = SourceTree("linux-source-7.2=7.2.13-1", tmp_path / "linux", owned=True)
    cfg = CellConfig(fragments=("iommufd",), overrides=())
    config_sha = "ab" * 32
    key = build_key(tree, config_sha, X86, HostBusybox())

    def fill(entry: Path) -> None:
        (entry / "vmlinuz").write_bytes(b"k")
        KernelArtifact(
            "fixed", "7.2.13", "linux-source-7.2=7.2.13-1", entry / "vmlinuz",
            entry / "initramfs.cpio", "00",
        ).save(entry / "artifact.json")  # fmt: skip

    cache.ensure("kernels", key, fill, print, made_by="test")
    merged = ["merged-config", tree.config_identity, kernels.wanted_text(cfg, X86)]
    cache.remember([*merged, kernels.compiler_identity()], config_sha)
    monkeypatch.setattr(kernels, "merge_config", pytest.fail)
    monkeypatch.setattr(kernels, "check_options_exist", pytest.fail)
    artifact = FixedTree(tree).prepare(KernelSpec("fixed", ""), X86, cache, print, cfg)
    assert artifact.release == "7.2.13"
    assert (
        json.loads((cache.entry("kernels", key) / "artifact.json").read_text())["spec"] == "fixed"
    )


def test_a_local_build_directory_is_remembered_as_a_cache_entry(
    checkout: Path, tmp_path: Path, monkeypatch
) -> None:
    """`vfio-lab cache` finds the build directories inside a developer's checkout only
    through the checkouts the lab remembers having built in."""
    cache = Cache(tmp_path / "cache")

    def merge(tree: SourceTree, cfg: CellConfig, arch: Arch, build_dir: Path, *_: object) -> None:
        (build_dir / ".config").write_text("CONFIG_VFIO=y\n")

    def build(
        self: SourceBuilt,
        spec: KernelSpec,
        tree: SourceTree,
        arch: Arch,
        busybox: Busybox,
        build_dir: Path,
        log: Path,
        cache: Cache,
        scratch: Path,
        entry: Path,
        progress: object,
    ) -> None:
        (scratch / "vmlinuz").write_bytes(b"k")
        KernelArtifact("local", "7.2.0", tree.identity, entry / "vmlinuz",
                       entry / "initramfs.cpio", "00").save(scratch / "artifact.json")  # fmt: skip

    monkeypatch.setattr(kernels, "check_options_exist", lambda *a: None)
    monkeypatch.setattr(kernels, "merge_config", merge)
    monkeypatch.setattr(SourceBuilt, "_build", build)
    cfg = CellConfig(overrides=(("VFIO", "y"),))
    LocalTree().prepare(KernelSpec("local", str(checkout)), X86, cache, print, cfg)
    assert cache.local_trees() == [checkout.resolve()]
    (found,) = cachegc.entries(cache, ["local-build"])
    assert found.path.parent == checkout and found.path.name.startswith(BUILD_PREFIX)
    assert found.made_by == f"build directory of local:{checkout} (config VFIO=y)"
    assert git(checkout, "status", "--porcelain") == ""
    assert cachegc.in_use(cache, found), "the building lab holds its build directory"
    cache.release()
    assert not cachegc.in_use(cache, found)
