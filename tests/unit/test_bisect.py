"""git bisect driven by the lab's exit codes: a real git repository, a stand-in oracle."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lab.core.errors import InfraError, UsageError
from lab.run.bisect import bisect


def git(tree: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", tree, "-c", "user.email=a@b", "-c", "user.name=a", *args],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Eight commits; `state` says bad from the fifth on."""
    path = tmp_path / "linux"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    for i in range(8):
        (path / "state").write_text("bad\n" if i >= 4 else "good\n")
        (path / "n").write_text(f"{i}\n")
        git(path, "add", ".")
        git(path, "commit", "-qm", f"commit {i}")
    return path


def oracle(tree: Path, codes: dict[int, int] | None = None):
    """Exit 0 or 1 by the checked-out state; `codes` overrides by commit number."""
    seen: list[int] = []

    def test(commit: str) -> tuple[int, Path | None]:
        n = int((tree / "n").read_text())
        seen.append(n)
        code = (codes or {}).get(n, 1 if (tree / "state").read_text() == "bad\n" else 0)
        return code, tree / f"run-{n}"

    return test, seen


def commit(tree: Path, n: int) -> str:
    return git(tree, "rev-list", "--reverse", "HEAD").splitlines()[n]


def test_it_names_the_first_bad_commit_and_resets_the_checkout(tree: Path) -> None:
    test, seen = oracle(tree)
    out = bisect(tree, commit(tree, 0), commit(tree, 7), test)
    assert out.first_bad == commit(tree, 4) and out.subject == "commit 4"
    assert [s.verdict for s in out.steps] == ["bad" if n >= 4 else "good" for n in seen]
    assert git(tree, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert int((tree / "n").read_text()) == 7


def test_an_infrastructure_failure_skips_the_commit(tree: Path) -> None:
    test, _ = oracle(tree, codes={5: 3})  # git tries 3, then 5 (skipped), 6, 4
    out = bisect(tree, commit(tree, 0), commit(tree, 7), test)
    assert out.first_bad == commit(tree, 4)
    skipped = [s for s in out.steps if s.verdict == "skip"]
    assert skipped and all(s.exit_code == 3 for s in skipped)


def test_skips_that_hide_the_answer_say_so(tree: Path) -> None:
    test, _ = oracle(tree, codes={3: 3})  # then only 3 or 4 can be the first bad
    with pytest.raises(InfraError, match="bisect cannot decide"):
        bisect(tree, commit(tree, 0), commit(tree, 7), test)
    assert git(tree, "rev-parse", "--abbrev-ref", "HEAD") == "main"


def test_a_usage_error_stops_the_bisection(tree: Path) -> None:
    test, _ = oracle(tree, codes=dict.fromkeys(range(8), 2))
    with pytest.raises(InfraError, match="the lab run exited 2"):
        bisect(tree, commit(tree, 0), commit(tree, 7), test)
    assert git(tree, "rev-parse", "--abbrev-ref", "HEAD") == "main"


def test_bad_revisions_and_a_dirty_tree_are_usage_errors(tree: Path) -> None:
    test, _ = oracle(tree)
    with pytest.raises(UsageError, match="not a git checkout with commits"):
        bisect(tree, "no-such-rev", "HEAD", test)
    (tree / "n").write_text("edited\n")
    with pytest.raises(UsageError, match="uncommitted changes"):
        bisect(tree, commit(tree, 0), commit(tree, 7), test)


def test_the_cli_refuses_a_kernel_that_is_no_checkout_and_a_dirty_tree(tree: Path) -> None:
    from tests.conftest import lab

    not_local = lab("bisect", "--kernel", "debian:7.2", "--good", "a", "--bad", "b", "-k", "x")
    assert not_local.returncode == 2
    assert "--kernel debian:7.2: bisect needs a git checkout, local:PATH" in not_local.stderr
    (tree / "Makefile").write_text("VERSION = 7\n")  # what makes it a kernel tree to the lab
    (tree / "Kconfig").write_text('mainmenu "x"\n')
    git(tree, "add", ".")
    git(tree, "commit", "-qm", "a kernel tree")
    (tree / "n").write_text("edited\n")
    dirty = lab("bisect", "--kernel", f"local:{tree}", "--good", "HEAD~1", "--bad", "HEAD",
                "-k", "x")  # fmt: skip
    assert dirty.returncode == 2 and "has uncommitted changes" in dirty.stderr
