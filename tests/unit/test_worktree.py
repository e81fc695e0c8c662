"""A `local:` tree's identity: HEAD plus the content of every path that differs from it,
untracked files included, ignored ones not. Real git in temporary directories."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lab.artifacts.kbuild import build_dir_for
from lab.artifacts.kernels import LocalTree
from lab.core.cache import Cache
from lab.model.arches import ARCHES
from lab.model.kernelspec import KernelSpec, SpecError

VFIO = Path("drivers/vfio")


# Fixed dates: two checkouts committed in different seconds must still share a HEAD.
GIT_DATES = {
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}


def git(tree: Path, *args: str) -> str:
    argv = ["git", "-c", "user.email=a@b", "-c", "user.name=a", "-C", str(tree), *args]
    env = {**os.environ, **GIT_DATES}
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout


def make_checkout(tree: Path) -> Path:
    (tree / VFIO).mkdir(parents=True)
    (tree / VFIO / "Kconfig").write_text("config VFIO\n\tbool\n")
    (tree / VFIO / "vfio_main.c").write_text("int x;\n")
    (tree / VFIO / "group.c").write_text("int g;\n")
    (tree / ".gitignore").write_text("*.o\n")
    git(tree.parent, "init", "-q", tree.name)
    git(tree, "add", ".")
    git(tree, "commit", "-qm", "base")
    return tree


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    return make_checkout(tmp_path / "linux")


def identity(tree: Path) -> str:
    spec = KernelSpec("local", str(tree))
    return LocalTree().tree(spec, Cache(tree.parent / "cache"), print).identity


def test_a_clean_checkout_is_its_commit(checkout: Path) -> None:
    assert identity(checkout) == f"git:{git(checkout, 'rev-parse', 'HEAD').strip()}"


def test_an_untracked_source_file_changes_the_identity(checkout: Path) -> None:
    """A new .c file nobody `git add`ed is built all the same (`git diff HEAD` missed it)."""
    clean = identity(checkout)
    (checkout / VFIO / "new.c").write_text("int n;\n")
    added = identity(checkout)
    assert added != clean
    (checkout / VFIO / "new.c").write_text("int n = 1;\n")
    assert identity(checkout) not in (clean, added), "the untracked file's content counts"


def test_tracked_edits_deletions_and_renames_change_the_identity(checkout: Path) -> None:
    seen = {identity(checkout)}
    (checkout / VFIO / "vfio_main.c").write_text("int x = 1;\n")
    seen.add(identity(checkout))
    (checkout / VFIO / "group.c").unlink()
    seen.add(identity(checkout))
    git(checkout, "mv", str(VFIO / "vfio_main.c"), str(VFIO / "main.c"))
    seen.add(identity(checkout))
    os.chmod(checkout / VFIO / "main.c", 0o755)
    seen.add(identity(checkout))
    assert len(seen) == 5


def test_staging_changes_nothing_and_an_undone_edit_is_no_edit(checkout: Path) -> None:
    """The build reads the disk: whether an edit is staged is not the kernel's business."""
    clean = identity(checkout)
    (checkout / VFIO / "vfio_main.c").write_text("int x = 1;\n")
    (checkout / VFIO / "new.c").write_text("int n;\n")
    unstaged = identity(checkout)
    git(checkout, "add", ".")
    assert identity(checkout) == unstaged
    (checkout / VFIO / "vfio_main.c").write_text("int x;\n")  # staged edit, undone on disk
    (checkout / VFIO / "new.c").unlink()
    assert identity(checkout) == clean


def test_a_rename_is_the_same_staged_or_not(checkout: Path, tmp_path: Path) -> None:
    other = make_checkout(tmp_path / "other")
    git(checkout, "mv", str(VFIO / "group.c"), str(VFIO / "g.c"))
    (other / VFIO / "group.c").rename(other / VFIO / "g.c")
    assert identity(checkout) == identity(other)


def test_ignored_files_and_build_directories_are_not_the_tree(checkout: Path) -> None:
    clean = identity(checkout)
    (checkout / VFIO / "vfio_main.o").write_bytes(b"\x7fELF")
    tree = LocalTree().tree(KernelSpec("local", str(checkout)), Cache(checkout / "c"), print)
    (build_dir_for(tree, "CONFIG_A=y\n", ARCHES["x86_64"]) / "vmlinux").write_text("built")
    assert identity(checkout) == clean


def test_a_touch_is_no_change(checkout: Path) -> None:
    (checkout / VFIO / "new.c").write_text("int n;\n")
    before = identity(checkout)
    for path in (VFIO / "vfio_main.c", VFIO / "new.c"):
        os.utime(checkout / path, (1, 1))
    assert identity(checkout) == before


def test_two_clones_with_the_same_edits_are_the_same_kernel(checkout: Path, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(checkout), str(clone))
    for tree in (checkout, clone):
        (tree / VFIO / "vfio_main.c").write_text("int x = 2;\n")
        (tree / VFIO / "new.c").write_text("int n;\n")
    git(clone, "add", str(VFIO / "new.c"))
    assert identity(checkout) == identity(clone) != f"git:{git(clone, 'rev-parse', 'HEAD').strip()}"


def test_only_kconfig_changes_reach_the_config_identity(checkout: Path) -> None:
    def config_identity() -> str:
        spec = KernelSpec("local", str(checkout))
        return LocalTree().tree(spec, Cache(checkout.parent / "c"), print).config_identity

    base = config_identity()
    (checkout / VFIO / "new.c").write_text("int n;\n")
    (checkout / VFIO / "vfio_main.c").write_text("int x = 1;\n")
    assert config_identity() == base
    (checkout / VFIO / "Kconfig.extra").write_text("config EXTRA\n\tbool\n")
    assert config_identity() != base


def test_symlinks_and_submodules_are_named_by_what_they_point_at(
    checkout: Path, tmp_path: Path
) -> None:
    (checkout / "link").symlink_to("drivers")
    linked = identity(checkout)
    (checkout / "link").unlink()
    (checkout / "link").symlink_to("drivers/vfio")
    assert identity(checkout) != linked
    sub = make_checkout(tmp_path / "sub")
    shutil.copytree(sub, checkout / "sub", symlinks=True)
    nested = identity(checkout)
    (checkout / "sub" / VFIO / "vfio_main.c").write_text("int y;\n")
    assert identity(checkout) != nested, "an edit in a nested checkout is an edit"


def test_a_directory_that_is_no_checkout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="is not a git checkout"):
        identity(tmp_path)


def test_a_submodule_is_named_by_its_own_identity(checkout: Path, tmp_path: Path) -> None:
    upstream = make_checkout(tmp_path / "upstream")
    git(
        checkout, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(upstream), "sub"
    )
    git(checkout, "commit", "-qm", "sub")
    clean = identity(checkout)
    assert clean == f"git:{git(checkout, 'rev-parse', 'HEAD').strip()}"
    (checkout / "sub" / VFIO / "new.c").write_text("int n;\n")
    untracked = identity(checkout)
    assert untracked != clean, "an untracked file in a submodule is built too"
    git(checkout / "sub", "add", ".")
    git(checkout / "sub", "commit", "-qm", "new")
    assert identity(checkout) not in (clean, untracked), "a submodule at another commit"


def test_a_fifo_in_place_of_a_file_is_a_change_not_a_hang(checkout: Path) -> None:
    clean = identity(checkout)
    (checkout / VFIO / "group.c").unlink()
    os.mkfifo(checkout / VFIO / "group.c")
    assert identity(checkout) != clean
