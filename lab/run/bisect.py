"""`git bisect` in a developer's checkout, with a lab run of the chosen tests as its oracle.

Each step checks out a commit (git picks it), and the caller's `test` builds that tree
(the persistent build directory and ccache keep it incremental), boots it and runs the
tests; its exit code says good (0), bad (1) or skip (an infrastructure failure: 125, as
for `git bisect run`). Anything else stops the bisection. The checkout is reset to
where it was whatever happens.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab.core.errors import BuildError, InfraError, UsageError
from lab.core.exitcodes import BISECT_SKIP, EXIT_OK, EXIT_UNEXPECTED, for_bisect
from lab.core.proc import capture

VERDICTS = {EXIT_OK: "good", EXIT_UNEXPECTED: "bad", BISECT_SKIP: "skip"}
_FIRST_BAD = re.compile(r"^([0-9a-f]{40}) is the first bad commit", re.MULTILINE)


@dataclass
class Step:
    commit: str
    subject: str
    verdict: str  # good | bad | skip
    exit_code: int  # the lab run's own
    run_dir: Path | None


@dataclass
class Outcome:
    first_bad: str
    subject: str
    steps: list[Step]


def git(tree: Path, *args: str) -> str:
    return capture(["git", "-C", tree, *args], artifact="git bisect")


def check_tree(tree: Path, good: str, bad: str) -> tuple[str, str]:
    """The two revisions as commits, in a clean git checkout; UsageError otherwise."""
    try:
        commits = tuple(git(tree, "rev-parse", "--verify", f"{r}^{{commit}}").strip()
                        for r in (good, bad))  # fmt: skip
    except BuildError:
        raise UsageError(f"{tree}: not a git checkout with commits {good} and {bad}") from None
    if git(tree, "status", "--porcelain", "--untracked-files=no").strip():
        raise UsageError(f"{tree}: has uncommitted changes; commit or stash them first")
    return commits[0], commits[1]


def bisect(
    tree: Path, good: str, bad: str, test: Callable[[str], tuple[int, Path | None]]
) -> Outcome:
    good_sha, bad_sha = check_tree(tree, good, bad)
    steps: list[Step] = []
    git(tree, "bisect", "start", bad_sha, good_sha)
    try:
        while True:
            head = git(tree, "rev-parse", "HEAD").strip()
            code, run_dir = test(head)
            verdict = VERDICTS.get(for_bisect(code))
            subject = git(tree, "log", "-1", "--format=%s", head).strip()
            steps.append(Step(head, subject, verdict or "stop", code, run_dir))
            if verdict is None:
                raise InfraError(f"bisect stopped at {head[:12]}: the lab run exited {code}")
            # git says which commit is next, or the answer, or that skips left it unable to
            # decide (exit 2: which is an answer too, and no error of the lab's).
            out = capture(
                ["git", "-C", tree, "bisect", verdict], artifact="git bisect", check=False
            )
            if m := _FIRST_BAD.search(out):
                first = m.group(1)
                return Outcome(first, git(tree, "log", "-1", "--format=%s", first).strip(), steps)
            if "only 'skip'ped commits left" in out:
                raise InfraError(f"bisect cannot decide: {' '.join(out.split())}")
            if not out.startswith("Bisecting:"):
                raise InfraError(f"git bisect {verdict} at {head[:12]}: {out.strip()}")
    finally:
        git(tree, "bisect", "reset")
