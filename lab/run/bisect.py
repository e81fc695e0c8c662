"""`git bisect` in a developer's checkout, with a lab run of the chosen tests as its oracle.

Each step checks out a commit (git picks it), and the caller's `run` builds that tree
(the persistent build directory and ccache keep it incremental), boots it, runs the
cell and hands back its results. `judge` reads them: the raw outcomes of the tests `-k`
selects, whatever the scenario expects of them. `--good` and `--bad` are tested first,
and must come out so. git is asked in plumbing (refs/bisect/*, rev-list), never read in
English, and the checkout is reset to where it was whatever happens.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lab.core.errors import BuildError, InfraError, UsageError
from lab.core.proc import capture
from lab.model.suites import DEFAULT_SUITE, Keyword
from lab.results.outcomes import FAILED, PASS
from lab.results.records import TestRecord
from lab.results.rundir import CellData, load_run
from lab.run import triage

Verdict = Literal["good", "bad", "skip"]


@dataclass
class Judgement:
    verdict: Verdict
    why: str


@dataclass
class Step:
    commit: str
    subject: str
    verdict: Verdict
    why: str
    run_dir: Path | None


@dataclass
class Outcome:
    first_bad: str
    subject: str
    steps: list[Step]


Run = Callable[[str], tuple[CellData, Path | None]]


# -- the oracle's verdict: a pure function of one cell's results ---------------------------
def selected(rec: TestRecord, keyword: Keyword) -> bool:
    """pytest applied -k to the lab's suite in the guest; a C suite ran every test, and -k
    picks among them by their `suite:id` names."""
    return rec.suite == DEFAULT_SUITE or keyword.matches(rec.name)


def judge(cell: CellData, keyword: Keyword) -> Judgement:
    """bad: a selected test failed or erred (raw); good: every selected test passed, in a
    run without problems; skip: anything that leaves the commit untested."""
    infra_error, verified, outside, problems = (
        _field(cell, k) for k in ("infra_error", "kernel_verified", "outside_alarms", "problems")
    )
    if infra_error:
        return Judgement("skip", f"infrastructure: {str(infra_error).splitlines()[0]}")
    if verified is not True:
        return Judgement("skip", "the guest's kernel is not verified as this commit's")
    tests = [r for r in cell.records if "/" not in r.name]  # subtests: their parent's
    chosen = [r for r in tests if selected(r, keyword)]
    alarms = [*outside] + [
        f"{r.name}: {line}" for r in tests if r not in chosen for line in triage.serious(r)
    ]
    if alarms:
        return Judgement("skip", f"a kernel alarm outside the selected tests: {alarms[0]}")
    if bad := [r for r in chosen if triage.raw_outcome(r) in FAILED]:
        return Judgement("bad", "; ".join(f"{r.name}: {_raw(r)}" for r in bad))
    if not chosen:
        if problems:
            return Judgement("skip", f"no selected test reported: {problems[0]}")
        # At --good or --bad this stops the bisection: the selection is wrong. Between
        # them, a C suite's tests may not be in the tree yet.
        return Judgement("skip", f"-k {keyword.text!r} selects no test")
    if others := [r for r in chosen if triage.raw_outcome(r) != PASS]:
        return Judgement("skip", "; ".join(f"{r.name}: {_raw(r)}" for r in others))
    if problems:
        return Judgement("skip", f"the run had problems: {'; '.join(problems)}")
    return Judgement("good", f"{len(chosen)} selected test(s) passed")


def judge_run(run_dir: Path, keyword: Keyword) -> Judgement:
    """A step of `git bisect run` over a run's cells, each judged as above: bad if a cell
    is (its kernel is this commit's, and a selected test failed there), else skip if a
    cell is (or none ran), else good."""
    judged = [(c.name, judge(c, keyword)) for c in load_run(run_dir).cells]
    if not judged:
        return Judgement("skip", f"{run_dir}: no cell ran")
    verdicts = {j.verdict for _, j in judged}
    verdict: Verdict = "bad" if "bad" in verdicts else "skip" if "skip" in verdicts else "good"
    return Judgement(verdict, "; ".join(f"{n}: {j.why}" for n, j in judged if j.verdict == verdict))


def _raw(rec: TestRecord) -> str:
    return f"{rec.outcome} ({rec.reason})" if rec.reason else rec.outcome


def _field(cell: CellData, key: str) -> Any:
    if key not in cell.summary:
        raise InfraError(f"cell {cell.name}: its summary has no {key}; cannot judge the step")
    return cell.summary[key]


def load_step(run_dir: Path, cell: str) -> CellData:
    """The one cell a bisect step ran, from its run directory."""
    for data in load_run(run_dir).cells:
        if data.name == cell:
            return data
    raise InfraError(f"{run_dir}: no result for cell {cell}")


# -- git -----------------------------------------------------------------------------------
def git(tree: Path, *args: str, check: bool = True) -> str:
    # git's porcelain speaks the user's language; the lab must read it in one.
    env = {**os.environ, "LC_ALL": "C"}
    return capture(["git", "-C", tree, *args], artifact="git bisect", check=check, env=env)


def check_tree(tree: Path, good: str, bad: str) -> tuple[str, str]:
    """The two revisions as commits, good an ancestor of bad, in a clean git checkout that
    is not bisecting already; UsageError otherwise."""
    try:
        commits = tuple(git(tree, "rev-parse", "--verify", f"{r}^{{commit}}").strip()
                        for r in (good, bad))  # fmt: skip
    except BuildError:
        raise UsageError(f"{tree}: not a git checkout with commits {good} and {bad}") from None
    if git(tree, "status", "--porcelain", "--untracked-files=no").strip():
        raise UsageError(f"{tree}: has uncommitted changes; commit or stash them first")
    if (tree / git(tree, "rev-parse", "--git-path", "BISECT_START").strip()).exists():
        raise UsageError(f"{tree}: a git bisect is in progress; `git bisect reset` it first")
    try:
        git(tree, "merge-base", "--is-ancestor", *commits)
    except BuildError:
        raise UsageError(f"--good {good} is not an ancestor of --bad {bad}") from None
    return commits[0], commits[1]


def _refs(tree: Path, pattern: str) -> set[str]:
    return set(git(tree, "for-each-ref", "--format=%(objectname)", pattern).split())


def _untested(tree: Path) -> tuple[str, list[str], set[str]]:
    """(the bad commit, the commits that may be the first bad, those left to test)."""
    bad = git(tree, "rev-parse", "--verify", "refs/bisect/bad").strip()
    goods = _refs(tree, "refs/bisect/good-*")
    candidates = git(tree, "rev-list", bad, "--not", *goods).split()
    return bad, candidates, set(candidates) - {bad} - _refs(tree, "refs/bisect/skip-*")


# -- the bisection -------------------------------------------------------------------------
def bisect(tree: Path, good: str, bad: str, keyword: Keyword, run: Run) -> Outcome:
    good_sha, bad_sha = check_tree(tree, good, bad)
    steps: list[Step] = []
    git(tree, "bisect", "start")
    try:
        for option, rev, sha, want in (
            ("--good", good, good_sha, "good"),
            ("--bad", bad, bad_sha, "bad"),
        ):
            git(tree, "checkout", "-q", "--detach", sha)
            step = _step(tree, sha, keyword, run)
            steps.append(step)
            if step.verdict != want:
                raise UsageError(
                    f"{option} {rev} ({sha[:12]}) is not {want}: {step.why}; "
                    f"its run: {step.run_dir}"
                )
            _mark(tree, want, sha)
        while True:
            bad_now, candidates, left = _untested(tree)
            if not left:
                if candidates != [bad_now]:
                    raise InfraError(
                        "bisect cannot decide: only skipped commits are left; the first bad "
                        f"commit could be any of {' '.join(candidates)}"
                    )
                return Outcome(bad_now, _subject(tree, bad_now), steps)
            head = git(tree, "rev-parse", "HEAD").strip()
            if head not in left or head in {s.commit for s in steps}:
                raise InfraError(f"git bisect checked out {head[:12]}, not a commit to test")
            step = _step(tree, head, keyword, run)
            steps.append(step)
            _mark(tree, step.verdict, head)
    finally:
        git(tree, "bisect", "reset")


def _step(tree: Path, commit: str, keyword: Keyword, run: Run) -> Step:
    cell, run_dir = run(commit)
    j = judge(cell, keyword)
    return Step(commit, _subject(tree, commit), j.verdict, j.why, run_dir)


def _mark(tree: Path, verdict: str, commit: str) -> None:
    # Its exit status and words are no answer (2: only skipped commits left); the refs
    # under refs/bisect are, and _untested reads them.
    git(tree, "bisect", verdict, commit, check=False)


def _subject(tree: Path, commit: str) -> str:
    return git(tree, "log", "-1", "--format=%s", commit).strip()
