"""Patched kernel trees: real `cp -al` and `patch` on a tiny tree, no kernel build."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.artifacts.kbuild import SourceTree, build_dir_for
from lab.artifacts.patches import patched_tree
from lab.core.cache import BUILD_PREFIX, Cache
from lab.core.errors import BuildError
from lab.model.arches import ARCHES

PATCH = """From 1 Mon Sep 17 00:00:00 2001
Subject: [PATCH] say hello

---
 Makefile | 2 +-
 1 file changed, 1 insertion(+), 1 deletion(-)

diff --git a/Makefile b/Makefile
--- a/Makefile
+++ b/Makefile
@@ -1,2 +1,2 @@
 VERSION = 7
-EXTRAVERSION =
+EXTRAVERSION = -hello
--
2.47.0
"""


def pristine(tmp_path: Path) -> SourceTree:
    path = tmp_path / "src" / "linux"
    build = path / f"{BUILD_PREFIX}-0123abcd"
    build.mkdir(parents=True)
    (path / "Makefile").write_text("VERSION = 7\nEXTRAVERSION =\n")
    (build / "vmlinux").write_text("built from the pristine tree")
    return SourceTree("linux-source-7.2=7.2.13-1", path, owned=True)


def write(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_patches_apply_to_a_copy_the_pristine_tree_keeps_its_files(tmp_path):
    tree, cache = pristine(tmp_path), Cache(tmp_path / "cache")
    patched = patched_tree(tree, [write(tmp_path, "hello.patch", PATCH)], cache, print)
    assert (patched.path / "Makefile").read_text() == "VERSION = 7\nEXTRAVERSION = -hello\n"
    assert (tree.path / "Makefile").read_text() == "VERSION = 7\nEXTRAVERSION =\n"
    assert not list(patched.path.glob(f"{BUILD_PREFIX}*")), "the pristine build came along"
    assert (
        patched.owned
        and build_dir_for(patched, "CONFIG_X=y\n", ARCHES["x86_64"]).parent == patched.path
    )
    assert patched.identity.startswith("linux-source-7.2=7.2.13-1+patches:")


def test_the_patched_tree_is_cached_by_patch_content(tmp_path):
    tree, cache = pristine(tmp_path), Cache(tmp_path / "cache")
    patch = write(tmp_path, "hello.patch", PATCH)
    first = patched_tree(tree, [patch], cache, print)
    (first.path / "marker").write_text("")
    assert patched_tree(tree, [patch], cache, print).path == first.path
    assert (first.path / "marker").exists(), "an unchanged patch built the tree again"
    patch.write_text(PATCH.replace("-hello", "-bye"))
    second = patched_tree(tree, [patch], cache, print)
    assert second.identity != first.identity
    assert "EXTRAVERSION = -bye" in (second.path / "Makefile").read_text()


def test_a_patch_that_does_not_apply_is_named(tmp_path):
    tree, cache = pristine(tmp_path), Cache(tmp_path / "cache")
    good = write(tmp_path, "hello.patch", PATCH)
    bad = write(tmp_path, "stale.patch", PATCH.replace("EXTRAVERSION =\n", "NAME = Baby\n"))
    with pytest.raises(BuildError, match=r"patch .*stale\.patch does not apply") as info:
        patched_tree(tree, [good, bad], cache, print)
    assert any("FAILED" in line or "hunk" in line.lower() for line in info.value.log_tail)
    assert not list((tmp_path / "cache" / "src").glob("*/linux")), "a half-patched tree stayed"
