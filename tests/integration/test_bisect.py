"""vfio-lab bisect for real: a local git tree made from Debian's 7.2 source, four commits,
the third of which a guest test sees; bisect builds, boots and tests until it names it.

The tree is hard links to the lab's unpacked 7.2 (edits add files, never write through a
link), and the cell is iommufd-compat's `=n`: the same config as the kernels the suite
built already, so the first step's build is mostly ccache hits and the next is
incremental in the tree's persistent build directory."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from lab.artifacts.kernels import KERNEL_BUILDERS
from lab.core.cache import Cache
from lab.model.kernelspec import parse_kernel_spec
from tests.conftest import REPO, lab

pytestmark = pytest.mark.vm


def git(tree: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", tree, "-c", "user.email=t@lab", "-c", "user.name=t", *args],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def commit(tree: Path, name: str, text: str, message: str) -> str:
    (tree / name).write_text(text)
    git(tree, "add", "-f", name)
    git(tree, "commit", "-qm", message)
    return git(tree, "rev-parse", "HEAD")


def debian_72_checkout(tmp_path: Path) -> Path:
    spec = parse_kernel_spec("debian:7.2")
    src = KERNEL_BUILDERS[spec.source].tree(spec, Cache(), lambda *_: None).path
    tree = tmp_path / "linux"
    tree.mkdir()
    for child in src.iterdir():
        if not child.name.startswith(".lab-build"):
            subprocess.run(["cp", "-al", child, tree], check=True)
    git(tree, "init", "-q")
    git(tree, "add", "-f", "-A")  # -f: Debian's .gitignore ignores its top level
    git(tree, "commit", "-qm", "Linux 7.2 as Debian ships it")
    return tree


def known_failure(tmp_path: Path) -> Path:
    """iommufd-compat with the bisected test declared a known failure: bisect must judge
    the raw outcome all the same, not an XFAIL as good and an XPASS as bad."""
    scenario = yaml.safe_load((REPO / "scenarios/iommufd-compat.yaml").read_text())
    scenario["expectations"].append({"test": "release_test.*", "reason": "declared to fool bisect"})
    path = tmp_path / "iommufd-compat-known.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return path


def test_bisect_names_the_commit_the_guest_sees(results, tmp_path) -> None:
    tree = debian_72_checkout(tmp_path)
    good = git(tree, "rev-parse", "HEAD")
    commit(tree, "Documentation/vfio-lab-note.txt", "one\n", "docs: a note")
    bad = commit(tree, "localversion-bisect", "-bisect-bad\n", "kbuild: the release goes bad")
    last = commit(tree, "Documentation/vfio-lab-note2.txt", "two\n", "docs: another note")
    for scenario in ("iommufd-compat", str(known_failure(tmp_path))):
        done = lab(
            "bisect", scenario, "--cell", "7.2-iommufd_vfio_container=n",
            "--kernel", f"local:{tree}", "--good", good, "--bad", last, "-k", "release",
            "--payload", str(REPO / "tests" / "fixtures" / "bisect_payload"),
            "--results", str(results),
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert f"first bad commit: {bad} kbuild: the release goes bad" in done.stdout
        steps = re.findall(r"^  ([0-9a-f]{12}) (good|bad|skip) *  (\S+)  ", done.stdout, re.M)
        assert [v for _, v, _ in steps[:2]] == ["good", "bad"], "--good and --bad come first"
        assert [c for c, _, _ in steps[:2]] == [good[:12], last[:12]], done.stdout
        assert all(verdict in ("good", "bad") for _, verdict, _ in steps), done.stdout
        for _, _, run_dir in steps:
            assert (Path(run_dir) / "summary.json").is_file(), "each step keeps its run"
        assert git(tree, "rev-parse", "HEAD") == last, "the checkout is back where it was"
