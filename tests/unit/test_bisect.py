"""vfio-lab bisect: a real git repository, and stand-ins for the lab's runs.

Three levels: `judge` on records built to fool it; `bisect` driving real git with a
stand-in oracle; and the CLI end to end, where only the guest is a stand-in (the
cell's prepare and boot), so the lab's own triage, results and run directory decide."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lab.cli import main
from lab.core.errors import InfraError, UsageError
from lab.model.suites import parse_keyword
from lab.results.records import TestRecord
from lab.results.rundir import CellData
from lab.results.tap import parse_text
from lab.run.bisect import Judgement, bisect, judge
from lab.run.cell import CellRun, PayloadOutcome

GIT = shutil.which("git") or "git"
K = parse_keyword("bisected")


def git(tree: Path, *args: str) -> str:
    return subprocess.run(
        [GIT, "-C", tree, "-c", "user.email=a@b", "-c", "user.name=a", *args],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Eight commits of a kernel tree (Makefile, Kconfig); `state` says bad from the fifth on."""
    path = tmp_path / "linux"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "Makefile").write_text("VERSION = 7\n")
    (path / "Kconfig").write_text('mainmenu "x"\n')
    for i in range(8):
        (path / "state").write_text("bad\n" if i >= 4 else "good\n")
        (path / "n").write_text(f"{i}\n")
        git(path, "add", ".")
        git(path, "commit", "-qm", f"commit {i}")
    return path


def commit(tree: Path, n: int) -> str:
    return git(tree, "rev-list", "--reverse", "HEAD").splitlines()[n]


def cell(*records: TestRecord, **summary: Any) -> CellData:
    """One cell's results as a clean run leaves them, `summary` overriding."""
    base = {"name": "c", "infra_error": None, "kernel_verified": True}
    return CellData({**base, "outside_alarms": [], "problems": [], **summary}, list(records))


def rec(name: str, outcome: str, suite: str = "lab", **kw: Any) -> TestRecord:
    return TestRecord(name, outcome, suite=suite, **kw)


# -- judge: records built to fool it ---------------------------------------------------------
def verdict(c: CellData, keyword: str = "bisected") -> Judgement:
    return judge(c, parse_keyword(keyword))


def test_a_known_failure_that_fails_raw_is_bad_and_one_that_passes_is_good() -> None:
    known = {"test": "m.bisected", "reason": "known"}
    assert verdict(cell(rec("m.bisected", "xfail", expectation=known))).verdict == "bad"
    assert verdict(cell(rec("m.bisected", "xpass", expectation=known))).verdict == "good"


def test_only_the_selected_c_suite_tests_decide() -> None:
    other_fails = rec("kselftest-vfio:other.fixture.case", "fail", "kselftest-vfio")
    passes = rec("kselftest-vfio:x.bisected", "pass", "kselftest-vfio")
    assert verdict(cell(rec("m.bisected", "pass"), other_fails)).verdict == "good"
    assert verdict(cell(passes, other_fails)).verdict == "good"
    fails = rec("kselftest-vfio:x.bisected", "error", "kselftest-vfio")
    assert verdict(cell(fails, other_fails)).verdict == "bad"
    # The suite's name is part of what -k matches.
    assert verdict(cell(other_fails), "kselftest-vfio:other").verdict == "bad"
    none = verdict(cell(other_fails), "kselftest-iommu or not other")
    assert none == Judgement("skip", "-k 'kselftest-iommu or not other' selects no test")


def test_a_kernel_alarm_outside_the_selected_tests_leaves_the_commit_untested() -> None:
    warn = "kernel warning outside any test: WARNING: CPU: 0 at x.c:1"
    for outcome in ("pass", "fail"):
        j = verdict(cell(rec("m.bisected", outcome), outside_alarms=[warn], problems=[warn]))
        assert (j.verdict, j.why) == ("skip", f"a kernel alarm outside the selected tests: {warn}")
    splat = rec("kselftest-vfio:other.case", "error", "kselftest-vfio", kernel=["warning: W"])
    j = verdict(cell(rec("m.bisected", "fail"), splat))
    assert (j.verdict, j.why) == ("skip", "a kernel alarm outside the selected tests: "
                                  "kselftest-vfio:other.case: warning: W")  # fmt: skip
    fault = rec("kselftest-vfio:other.case", "pass", "kselftest-vfio", kernel=["iommu fault: F"])
    assert verdict(cell(rec("m.bisected", "fail"), fault)).verdict == "bad", "not serious"


def test_a_splat_in_the_selected_test_is_bad() -> None:
    splat = rec("m.bisected", "error", kernel=["oops: Oops"], reason="kernel oops during the test")
    assert verdict(cell(splat, problems=["stopped early: panic: Oops"])).verdict == "bad"


def test_a_selection_of_nothing_says_so_only_when_the_run_was_clean() -> None:
    assert verdict(cell()) == Judgement("skip", "-k 'bisected' selects no test")
    died = verdict(cell(problems=["stopped early: died: QEMU exited"]))
    assert died == Judgement("skip", "no selected test reported: stopped early: died: QEMU exited")


def test_what_is_neither_pass_nor_fail_leaves_the_commit_untested() -> None:
    for outcome in ("skip", "notrun"):
        j = verdict(cell(rec("m.bisected", "pass"), rec("m.bisected2", outcome, reason="why")))
        assert (j.verdict, j.why) == ("skip", f"m.bisected2: {outcome} (why)")
    j = verdict(cell(rec("m.bisected", "pass"), problems=["1 of 2 planned tests did not report"]))
    assert j.verdict == "skip" and "did not report" in j.why
    assert verdict(cell(rec("m.bisected", "pass"), infra_error="boot\nmore")) == Judgement(
        "skip", "infrastructure: boot"
    )
    unverified = cell(rec("m.bisected", "fail"), kernel_verified=False)
    assert verdict(unverified).verdict == "skip", "another kernel's failure says nothing"


def test_subtests_are_their_parents_business() -> None:
    assert verdict(cell(rec("m.bisected", "pass"), rec("m.bisected/sub", "skip"))).verdict == "good"


def test_a_summary_without_what_the_judge_reads_is_named() -> None:
    incomplete = CellData({"name": "c", "infra_error": None}, [rec("m.bisected", "pass")])
    with pytest.raises(InfraError, match="cell c: its summary has no kernel_verified"):
        verdict(incomplete)


# -- -k over C suite ids -----------------------------------------------------------------
NAMES = ["kselftest-vfio:vfio_dma_mapping_test.anonymous.dma_map", "kselftest-iommu:iommufd_ioas.x"]


@pytest.mark.parametrize(
    "expr",
    ["", "DMA", "dma and not ioas", "not (dma or ioas)", "kselftest-iommu:iommufd",
     "ioas or vfio and x", "(ioas or vfio) and x", "not not dma", "a/b[1]"],
)  # fmt: skip
def test_keywords_match_as_pytest_matches_them(expr: str) -> None:
    from _pytest.mark.expression import Expression

    for name in NAMES:
        want = Expression.compile(expr).evaluate(lambda s, n=name: s.lower() in n.lower())
        assert parse_keyword(expr).matches(name) == (want if expr else True), name


def test_a_bad_keyword_expression_says_where() -> None:
    for expr, where in [("(dma", "column 1: this ( is never closed"), ("dma)", "column 4"),
                        ("dma or", "column 7: the expression ends too early"),
                        ("a = b", "column 3: unexpected character '='")]:  # fmt: skip
        with pytest.raises(UsageError) as e:
            parse_keyword(expr)
        assert str(e.value).startswith(f"-k '{expr}': {where}")


# -- bisect over real git, with a stand-in oracle ----------------------------------------------
def oracle(tree: Path, runs: dict[int, CellData] | None = None):
    """The bisected test passes or fails by the checked-out state; `runs` overrides by
    commit number."""
    seen: list[int] = []

    def run(sha: str) -> tuple[CellData, Path | None]:
        n = int((tree / "n").read_text())
        assert git(tree, "rev-parse", "HEAD") == sha
        seen.append(n)
        bad = (tree / "state").read_text() == "bad\n"
        return (runs or {}).get(n, cell(rec("m.bisected", "fail" if bad else "pass"))), tree

    return run, seen


def test_it_names_the_first_bad_commit_and_resets_the_checkout(tree: Path) -> None:
    run, seen = oracle(tree)
    out = bisect(tree, commit(tree, 0), commit(tree, 7), K, run)
    assert out.first_bad == commit(tree, 4) and out.subject == "commit 4"
    assert seen[:2] == [0, 7], "--good and --bad are tested first"
    assert [s.verdict for s in out.steps] == ["bad" if n >= 4 else "good" for n in seen]
    assert git(tree, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert int((tree / "n").read_text()) == 7


def test_adjacent_good_and_bad_need_no_step_between(tree: Path) -> None:
    run, seen = oracle(tree)
    out = bisect(tree, commit(tree, 3), commit(tree, 4), K, run)
    assert out.first_bad == commit(tree, 4) and seen == [3, 4]


def test_an_infrastructure_failure_skips_the_commit(tree: Path) -> None:
    run, _ = oracle(tree, {5: cell(infra_error="boot failed")})
    out = bisect(tree, commit(tree, 0), commit(tree, 7), K, run)
    assert out.first_bad == commit(tree, 4)
    skipped = [s for s in out.steps if s.verdict == "skip"]
    assert skipped and all(s.why == "infrastructure: boot failed" for s in skipped)


def test_skips_that_hide_the_answer_say_so(tree: Path) -> None:
    run, _ = oracle(tree, {3: cell(infra_error="x")})  # then only 3 or 4 can be the first bad
    with pytest.raises(InfraError, match="bisect cannot decide") as e:
        bisect(tree, commit(tree, 0), commit(tree, 7), K, run)
    assert commit(tree, 3) in str(e.value) and commit(tree, 4) in str(e.value)
    assert git(tree, "rev-parse", "--abbrev-ref", "HEAD") == "main"


def test_an_error_of_a_run_stops_the_bisection_and_resets_the_checkout(tree: Path) -> None:
    def run(sha: str) -> tuple[CellData, Path | None]:
        raise UsageError("pytest in the guest exited 4")

    with pytest.raises(UsageError, match="exited 4"):
        bisect(tree, commit(tree, 0), commit(tree, 7), K, run)
    assert git(tree, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert not (tree / ".git" / "BISECT_START").exists()


@pytest.mark.parametrize(
    ("good", "bad", "message"),
    [(5, 7, "--good {good} ({short}) is not good: m.bisected: fail"),
     (0, 2, "--bad {bad} ({short}) is not bad: 1 selected test(s) passed")],
)  # fmt: skip
def test_good_and_bad_are_checked_first(tree: Path, good: int, bad: int, message: str) -> None:
    run, seen = oracle(tree)
    g, b = commit(tree, good), commit(tree, bad)
    wrong = g if "--good" in message else b
    with pytest.raises(UsageError) as e:
        bisect(tree, g, b, K, run)
    assert message.format(good=g, bad=b, short=wrong[:12]) in str(e.value)
    assert seen == ([good] if "--good" in message else [good, bad])
    assert git(tree, "rev-parse", "--abbrev-ref", "HEAD") == "main"


def test_an_untestable_good_or_bad_stops_too(tree: Path) -> None:
    run, _ = oracle(tree, {7: cell(infra_error="kernel build failed")})
    with pytest.raises(UsageError, match=r"is not bad: infrastructure: kernel build failed"):
        bisect(tree, commit(tree, 0), commit(tree, 7), K, run)


def test_a_selection_of_nothing_is_a_usage_error(tree: Path) -> None:
    c_suite = cell(rec("kselftest-vfio:other.case", "fail", "kselftest-vfio"))
    run, seen = oracle(tree, dict.fromkeys(range(8), c_suite))
    with pytest.raises(UsageError, match=r"is not good: -k 'bisected' selects no test"):
        bisect(tree, commit(tree, 0), commit(tree, 7), K, run)
    assert seen == [0]


def test_bad_revisions_a_dirty_tree_and_a_bisection_under_way_are_usage_errors(
    tree: Path,
) -> None:
    run, _ = oracle(tree)
    with pytest.raises(UsageError, match="not a git checkout with commits"):
        bisect(tree, "no-such-rev", "HEAD", K, run)
    with pytest.raises(UsageError, match="--good HEAD is not an ancestor of --bad HEAD~3"):
        bisect(tree, "HEAD", "HEAD~3", K, run)
    git(tree, "bisect", "start")
    with pytest.raises(UsageError, match="a git bisect is in progress"):
        bisect(tree, commit(tree, 0), commit(tree, 7), K, run)
    assert (tree / ".git" / "BISECT_START").exists(), "the user's bisection is left alone"
    git(tree, "bisect", "reset")
    (tree / "n").write_text("edited\n")
    with pytest.raises(UsageError, match="uncommitted changes"):
        bisect(tree, commit(tree, 0), commit(tree, 7), K, run)


# -- the CLI end to end: only the guest is a stand-in --------------------------------------
Guest = Callable[[int, bool], tuple[dict[str, dict[str, bool]], list[str]]]


def tap(results: dict[str, bool]) -> str:
    lines = ["TAP version 13", *(f"# collected: {n}" for n in results), f"1..{len(results)}"]
    lines += [f"{'ok' if ok else 'not ok'} {i} {n}" for i, (n, ok) in enumerate(results.items(), 1)]
    return "\n".join(lines) + "\n"


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tree: Path):
    """The lab in this process with a stand-in guest: `stand_in(guest)`, then `main(...)`.
    `guest(n, bad)` gives each suite's results ({name: passed}) and the kernel log at
    commit n. pytest's -k is applied to the lab suite as a substring; the C suites run
    everything, as they do."""
    monkeypatch.setenv("VFIO_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("lab.cli.common.doctor.require_qemu", lambda *a: None)
    monkeypatch.setattr(CellRun, "prepare", lambda self, result: None)

    def use(guest: Guest) -> None:
        def boot_and_test(self: CellRun, prepared: None, result: Any) -> PayloadOutcome:
            result.kernel_verified = True
            (self.dir / "console.log").write_text("")
            suites, dmesg = guest(
                int((tree / "n").read_text()), (tree / "state").read_text() == "bad\n"
            )
            keyword = self.pytest_args[self.pytest_args.index("-k") + 1]
            taps = {}
            for suite in self.cell.scenario.payload.suites:
                results = suites.get(suite, {})
                if suite == "lab":
                    results = {n: ok for n, ok in results.items() if keyword in n}
                taps[suite] = parse_text(tap(results))
            return PayloadOutcome(taps, dmesg, None)

        monkeypatch.setattr(CellRun, "boot_and_test", boot_and_test)

    return use


@pytest.fixture
def fake_lab(stand_in, tmp_path: Path, tree: Path):
    """`vfio-lab bisect` over the tree's eight commits with a stand-in guest."""

    def run(guest: Guest, scenario: str, *args: str) -> int:
        stand_in(guest)
        return main(["bisect", scenario, "--kernel", f"local:{tree}", "--good",
                     commit(tree, 0), "--bad", commit(tree, 7), "--results",
                     str(tmp_path / "results"), "-q", *args])  # fmt: skip

    return run


def scenario(tmp_path: Path, suites: str, expectations: str = "") -> str:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\npayload:\n  suites: [{suites}]\n{expectations}")
    return str(path)


KNOWN = "expectations:\n  - test: 'm.bisected'\n    reason: it is known to fail\n"


def lab_test(n: int, bad: bool) -> tuple[dict[str, dict[str, bool]], list[str]]:
    return {"lab": {"m.bisected": not bad, "m.other": True}}, []


def test_cli_a_declared_known_failure_does_not_turn_the_steps_around(
    fake_lab, tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = fake_lab(lab_test, scenario(tmp_path, "lab", KNOWN), "-k", "bisected")
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"first bad commit: {commit(tree, 4)} commit 4" in out


def test_cli_a_c_suite_test_outside_the_selection_does_not_decide(
    fake_lab, tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def guest(n: int, bad: bool) -> tuple[dict[str, dict[str, bool]], list[str]]:
        c_suite = {"kselftest-vfio:fixture.always.broken": False}
        return {**lab_test(n, bad)[0], "kselftest-vfio": c_suite}, []

    code = fake_lab(guest, scenario(tmp_path, "lab, kselftest-vfio"), "-k", "bisected")
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"first bad commit: {commit(tree, 4)} commit 4" in out


def test_cli_a_kernel_alarm_outside_any_test_skips_the_commit(
    fake_lab, tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    warn = "[ 0.5] WARNING: CPU: 0 PID: 1 at drivers/iommu/x.c:1 y+0x1/0x2"

    def guest(n: int, bad: bool) -> tuple[dict[str, dict[str, bool]], list[str]]:
        # The test goes bad at 6; git tests 3 first, whose boot warns.
        return lab_test(n, n >= 6)[0], [warn] if n == 3 else []

    code = fake_lab(guest, scenario(tmp_path, "lab"), "-k", "bisected")
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"first bad commit: {commit(tree, 6)} commit 6" in out
    assert f"  {commit(tree, 3)[:12]} skip" in out
    assert "a kernel alarm outside the selected tests: kernel warning outside any test" in out


def test_cli_a_good_that_is_bad_is_refused(
    fake_lab, tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def guest(n: int, bad: bool) -> tuple[dict[str, dict[str, bool]], list[str]]:
        return {"lab": {"m.bisected": n == 7}}, []  # everything but --bad fails

    code = fake_lab(guest, scenario(tmp_path, "lab"), "-k", "bisected")
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"--good {commit(tree, 0)} ({commit(tree, 0)[:12]}) is not good: m.bisected: fail" in err


def test_cli_a_selection_of_nothing_is_exit_2(
    fake_lab, tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def guest(n: int, bad: bool) -> tuple[dict[str, dict[str, bool]], list[str]]:
        return {"kselftest-vfio": {"kselftest-vfio:fixture.variant.case": not bad}}, []

    code = fake_lab(guest, scenario(tmp_path, "kselftest-vfio"), "-k", "no_such_test")
    err = capsys.readouterr().err
    assert code == 2, err
    assert "is not good: -k 'no_such_test' selects no test" in err


def test_cli_git_is_read_in_no_language_but_c(
    fake_lab, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A git that speaks German unless LC_ALL=C, and notes the LC_ALL of every call."""
    bin_dir, log = tmp_path / "bin", tmp_path / "git-calls"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(
        "#!/bin/sh\n"
        f'echo "${{LC_ALL-unset}} $*" >> {log}\n'
        f'[ "$LC_ALL" = C ] && exec {GIT} "$@"\n'
        f'out=$({GIT} "$@"); rc=$?\n'
        "printf '%s\\n' \"$out\" | sed -e 's/is the first bad commit/ist der erste schlechte"
        " Commit/' -e 's/^Bisecting:/Halbierung:/'\n"
        "exit $rc\n"
    )
    (bin_dir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    code = fake_lab(lab_test, scenario(tmp_path, "lab"), "-k", "bisected")
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"first bad commit: {commit(tree, 4)} commit 4" in out.out
    calls = log.read_text().splitlines()
    assert calls and all(c.startswith("C ") for c in calls), calls


def test_the_cli_refuses_a_kernel_that_is_no_checkout_and_a_dirty_tree(tree: Path) -> None:
    from tests.conftest import lab

    not_local = lab("bisect", "--kernel", "debian:7.2", "--good", "a", "--bad", "b", "-k", "x")
    assert not_local.returncode == 2
    assert "--kernel debian:7.2: bisect needs a git checkout, local:PATH" in not_local.stderr
    (tree / "n").write_text("edited\n")
    dirty = lab("bisect", "--kernel", f"local:{tree}", "--good", "HEAD~1", "--bad", "HEAD",
                "-k", "x")  # fmt: skip
    assert dirty.returncode == 2 and "has uncommitted changes" in dirty.stderr
    bad_k = lab("bisect", "--kernel", f"local:{tree}", "--good", "no-such-rev", "--bad", "HEAD",
                "-k", "(x")  # fmt: skip
    assert bad_k.returncode == 2 and "-k '(x': column 1: this ( is never closed" in bad_k.stderr


# -- `git bisect run vfio-lab run --bisect`: each step judged as bisect judges ----------------
@pytest.fixture
def bisect_run(stand_in, tmp_path: Path, tree: Path):
    """`vfio-lab run --bisect` of the tree at commit n, as `git bisect run` would start it."""

    def run(guest: Guest, n: int, suites: str, expectations: str = "", *args: str) -> int:
        stand_in(guest)
        git(tree, "checkout", "-q", "--detach", commit(tree, n))
        path = tmp_path / "s.yaml"
        kernel = f"kernels: [local:{tree}]\n"
        path.write_text(f"name: s\n{kernel}payload:\n  suites: [{suites}]\n{expectations}")
        return main(["run", "--bisect", str(path), "--results", str(tmp_path / "results"),
                     "-q", "--no-snapshot", *args])  # fmt: skip

    return run


def test_run_bisect_judges_a_known_failure_by_its_raw_outcome(
    bisect_run, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bisect_run(lab_test, 4, "lab", KNOWN, "-k", "bisected") == 1, "fails raw: bad"
    assert "bisect step: bad: " in capsys.readouterr().out
    assert bisect_run(lab_test, 3, "lab", KNOWN, "-k", "bisected") == 0, "passes raw: good"


def test_run_bisect_lets_only_the_selected_c_suite_tests_decide(bisect_run) -> None:
    def guest(n: int, bad: bool) -> tuple[dict[str, dict[str, bool]], list[str]]:
        c_suite = {"kselftest-vfio:fixture.always.broken": False}
        return {**lab_test(n, bad)[0], "kselftest-vfio": c_suite}, []

    assert bisect_run(guest, 3, "lab, kselftest-vfio", "", "-k", "bisected") == 0


def test_run_bisect_skips_a_commit_with_a_kernel_alarm_outside_the_tests(
    bisect_run, capsys: pytest.CaptureFixture[str]
) -> None:
    warn = "[ 0.5] WARNING: CPU: 0 PID: 1 at drivers/iommu/x.c:1 y+0x1/0x2"

    def guest(n: int, bad: bool) -> tuple[dict[str, dict[str, bool]], list[str]]:
        return lab_test(n, bad)[0], [warn]

    assert bisect_run(guest, 3, "lab", "", "-k", "bisected") == 125
    assert "a kernel alarm outside the selected tests" in capsys.readouterr().out


def test_run_bisect_refuses_a_bad_keyword_before_running(bisect_run) -> None:
    assert bisect_run(lab_test, 3, "lab", "", "-k", "(bisected") == 128


def test_repro_bisect_judges_a_known_failure_by_its_raw_outcome(
    stand_in, tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`git bisect run vfio-lab repro --bisect RUN/CELL`: the cell's scenario declares the
    bisected test a known failure."""
    from lab.model.scenario import DEFAULT_PAYLOAD
    from lab.run.booter import CellBooter

    stand_in(lab_test)
    monkeypatch.setattr(CellBooter, "prepare", lambda self, cell: None)
    monkeypatch.setattr("lab.cli.repro.repro.drift", lambda *a: [])
    git(tree, "checkout", "-q", "--detach", commit(tree, 4))
    (tmp_path / "s.yaml").write_text(f"name: s\nkernels: [local:{tree}]\n{KNOWN}")
    cell_dir = tmp_path / "old" / "local-linux"
    cell_dir.mkdir(parents=True)
    (cell_dir / "qemu-argv.json").write_text("[]")
    kernel = {"resolved_spec": f"local:{tree}", "identity": "git:x", "vmlinuz_sha256": "x",
              "initramfs_sha256": "x"}  # fmt: skip
    payload = {"tests": str(DEFAULT_PAYLOAD), "tests_digest": "x", "runtime_digest": "x"}
    record = {"cell": "local-linux", "scenario_file": str(tmp_path / "s.yaml"),
              "scenario_snapshot": "../scenario.yaml", "kernel": kernel, "rootfs_key": "x",
              "payload": payload, "pytest_args": ["-k", "bisected"], "accelerator": "tcg"}  # fmt: skip
    (cell_dir / "provenance.json").write_text(json.dumps(record))
    argv = ["repro", "--bisect", str(cell_dir), "--results", str(tmp_path / "results"), "-q"]
    assert main([*argv, "--no-snapshot"]) == 1, "the known failure fails raw: bad"


# -- pytest selecting none of the lab's tests -------------------------------------------------
class NoTestSSH:
    """A guest whose pytest collected nothing: the TAP plugin's empty plan, exit 5."""

    def __init__(self, tap: str) -> None:
        self.tap = tap

    def run(self, command: str, timeout: float, on_output: Any, on_stderr: Any, watch: Any) -> Any:
        from lab.vm.ssh import CommandResult

        on_output(self.tap)
        return CommandResult(5, self.tap, "no tests ran (2 deselected)")


def test_pytest_selecting_nothing_is_an_answer_only_for_bisect(tmp_path: Path) -> None:
    from lab.model import scenario
    from lab.run.payload import TapStream, run_payload
    from lab.vm.console import ConsoleWatch

    s = scenario.load(scenario.locate("quick"))

    def payload(tap: str, may_select_none: bool) -> Any:
        stream = TapStream(tmp_path / "results.tap")
        watch = ConsoleWatch(tmp_path / "console.log", 60.0)
        ssh: Any = NoTestSSH(tap)
        return run_payload(ssh, s, ["-k", "x"], stream, watch, tmp_path / "log", may_select_none)

    assert payload("TAP version 13\n1..0\n", True).pytest_status == 5
    with pytest.raises(UsageError, match="no test ran"):
        payload("TAP version 13\n1..0\n", False)
    with pytest.raises(UsageError, match="no test ran"):
        payload("", True)  # no plan: no word from the plugin that nothing was collected
