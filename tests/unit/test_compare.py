"""`vfio-lab compare` and `vfio-lab report` on run directories written by RunResults."""

from __future__ import annotations

import json

import pytest

from lab.core.errors import UsageError
from lab.model.shards import WHOLE, ShardPlan
from lab.results import compare, merge
from lab.results.rundir import load_run
from tests.conftest import lab
from tests.unit.run_fixtures import SCENARIO_HASH, rec, shard_run, write_run


def two_runs(tmp_path, old, new):
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    return write_run(tmp_path / "old", old), write_run(tmp_path / "new", new)


def test_each_kind_of_difference_is_listed_once(tmp_path):
    old = {
        "c": [
            rec("t.regress"),
            rec("t.fixed", "fail"),
            rec("t.skipped"),
            rec("t.diag", "pass", "iopte_size: 1G"),
            rec("t.gone"),
            rec("t.same", "pass", "iova: 0x1000"),
        ],
        "old-only": [rec("t.x")],
    }
    new = {
        "c": [
            rec("t.regress", "error", reason="kernel oops"),
            rec("t.fixed"),
            rec("t.skipped", "skip"),
            rec("t.diag", "pass", "iopte_size: 4K"),
            rec("t.new"),
            rec("t.new_broken", "fail"),
            rec("t.same", "pass", "iova: 0x1000"),
        ],
        "new-only": [rec("t.x")],
    }
    a, b = two_runs(tmp_path, old, new)
    c = compare.compare(load_run(a), load_run(b))
    names = lambda changes: [ch.test for ch in changes]  # noqa: E731
    assert names(c.new_failures) == ["t.regress", "t.new_broken"]
    assert names(c.fixes) == ["t.fixed"]
    assert names(c.lost_coverage) == ["t.gone", "t.skipped"]
    assert names(c.other_changes) == []
    assert [ch.detail for ch in c.changed_diagnostics] == ["iopte_size: 1G -> 4K"]
    assert names(c.appeared) == ["t.new"]
    assert (c.cells_appeared, c.cells_vanished) == (["new-only"], ["old-only"])
    assert c.regressions


def test_a_cell_that_stopped_booting_is_a_regression(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    old = write_run(tmp_path / "x", {"c": [rec("t.a")], "d": []}, infra={"d": "boot timeout"})
    new = write_run(
        tmp_path / "y", {"c": [], "d": []}, infra={"c": "no SSH answer\ntail", "d": "boot timeout"}
    )
    c = compare.compare(load_run(old), load_run(new))
    assert c.cells_broken == ["c: no SSH answer"]
    assert c.cells_still_broken == ["d: boot timeout"]
    assert c.regressions
    text = compare.render(c, load_run(old), load_run(new))
    assert "cells now failing for infrastructure reasons (1):\n  c: no SSH answer" in text
    assert not compare.compare(load_run(old), load_run(old)).regressions


def test_a_test_that_now_skips_is_a_regression_unless_accepted(tmp_path):
    a, b = two_runs(
        tmp_path,
        {"c": [rec("t.iommufd"), rec("t.gone"), rec("t.was_skipped", "skip")]},
        {
            "c": [
                rec("t.iommufd", "skip", reason="CONFIG_IOMMUFD not set"),
                rec("t.was_skipped", "skip"),
            ]
        },
    )
    done = lab("compare", str(a), str(b))
    assert done.returncode == 1, done.stderr
    assert "lost coverage: tests that ran and now skip or are gone (2):" in done.stdout
    assert "  c  t.iommufd  pass -> skip: CONFIG_IOMMUFD not set" in done.stdout
    assert "  c  t.gone  pass -> absent" in done.stdout
    accepted = lab("compare", "--accept-lost", str(a), str(b))
    assert accepted.returncode == 0, accepted.stdout
    assert "lost coverage accepted (--accept-lost)" in accepted.stdout
    # Skipping before and after is no change; a skip that starts to run is no loss.
    assert lab("compare", str(b), str(a)).returncode == 0


def test_a_vanished_cell_is_lost_coverage(tmp_path):
    a, b = two_runs(tmp_path, {"c": [rec("t.a")], "d": [rec("t.a")]}, {"c": [rec("t.a")]})
    c = compare.compare(load_run(a), load_run(b))
    assert c.cells_vanished == ["d"] and c.regressions
    assert not compare.compare(load_run(a), load_run(b), accept_lost=True).regressions


def test_a_cell_missing_from_a_merged_night_is_a_regression_not_lost_coverage(tmp_path):
    both = {"7.2-y": [rec("t.a")], "7.2-n": [rec("t.a")]}
    (tmp_path / "old").mkdir()
    old = write_run(tmp_path / "old", both)
    shard = shard_run(tmp_path / "shard", 1, 2, {"7.2-y": [rec("t.a")]})
    new = merge.merge([shard], tmp_path / "new").dir
    c = compare.compare(load_run(old), load_run(new), accept_lost=True)
    assert c.cells_missing == ["7.2-n"] and c.cells_vanished == []
    assert c.regressions, "a shard that never came is not a smaller matrix"
    done = lab("compare", str(old), str(new), "--accept-lost")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cells missing from the new run (promised, never ran): 7.2-n" in done.stdout
    # Missing on both nights: still missing, as a cell still broken is no new regression.
    again = compare.compare(load_run(new), load_run(new))
    assert again.cells_still_missing == ["7.2-n"] and not again.regressions
    # A cell new in the scenario that never ran has lost nothing, but is not fine either.
    (tmp_path / "older").mkdir()
    older = write_run(tmp_path / "older", {"7.2-y": [rec("t.a")]})
    assert compare.compare(load_run(older), load_run(new)).cells_missing == ["7.2-n"]


def test_cli_compare_exit_codes_and_text(tmp_path):
    a, b = two_runs(
        tmp_path, {"c": [rec("t.a"), rec("t.b")]}, {"c": [rec("t.a"), rec("t.b", "fail")]}
    )
    done = lab("compare", str(a), str(b))
    assert done.returncode == 1, done.stderr
    assert "new failures and errors (1):\n  c  t.b  pass -> fail" in done.stdout
    assert done.stdout.rstrip().endswith("regressions: yes")
    back = lab("compare", str(b), str(a))
    assert back.returncode == 0 and "fixes (1):" in back.stdout
    same = lab("compare", str(a), str(a))
    assert same.returncode == 0 and "no differences" in same.stdout


def test_compare_and_report_refuse_what_is_not_a_run_directory(tmp_path):
    a, _ = two_runs(tmp_path, {"c": [rec("t.a")]}, {"c": [rec("t.a")]})
    done = lab("compare", str(tmp_path), str(a))
    assert done.returncode == 2
    assert f"{tmp_path} is not a vfio-lab run directory: it has no summary.json" in done.stderr
    assert "Traceback" not in done.stderr
    (a / "c" / "tests.json").write_text("{truncated")
    done = lab("report", str(a))
    assert (
        done.returncode == 2 and f"{a / 'c' / 'tests.json'}: unreadable or not JSON" in done.stderr
    )
    (a / "c" / "tests.json").write_text(json.dumps([{"bogus": 1}]))
    done = lab("report", str(a))
    assert done.returncode == 2 and "not a list of test records" in done.stderr
    (a / "summary.json").write_text("[]")
    assert "not a vfio-lab summary" in lab("report", str(a)).stderr
    assert lab("report", str(tmp_path / "missing")).returncode == 2


def test_report_writes_both_files_again(tmp_path):
    a, _ = two_runs(tmp_path, {"c": [rec("t.a")]}, {"c": [rec("t.a")]})
    (a / "report.html").unlink()
    (a / "junit.xml").unlink()
    done = lab("report", str(a))
    assert done.returncode == 0
    assert (a / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert '<testsuite name="c"' in (a / "junit.xml").read_text()


def test_a_killed_or_failed_run_is_no_baseline_and_no_clean_result(tmp_path):
    """Built to fool the gate: an old run that died before its cells (exit 3 at the
    start, or SIGKILL) would otherwise make every new result "appeared" and compare clean."""
    promised = ShardPlan(WHOLE, ("7.2-y", "7.2-n"), SCENARIO_HASH)
    (tmp_path / "died").mkdir()
    died = write_run(tmp_path / "died", {"7.2-y": [rec("t.a")]}, plan=promised)
    summary = json.loads((died / "summary.json").read_text())
    (died / "summary.json").write_text(json.dumps({**summary, "exit_code": None}))
    (tmp_path / "whole").mkdir()
    whole = write_run(tmp_path / "whole", {"7.2-y": [rec("t.a")], "7.2-n": [rec("t.a")]})
    with pytest.raises(UsageError, match=r"no baseline for them: 7\.2-n \(that run never finished"):
        compare.compare(load_run(died), load_run(whole))
    done = lab("compare", str(died), str(whole))
    assert done.returncode == 2 and "no baseline for them: 7.2-n" in done.stderr, done.stderr
    # The other way round, the cell the new run never reached is missing: a regression.
    c = compare.compare(load_run(whole), load_run(died), accept_lost=True)
    assert c.cells_missing == ["7.2-n"] and c.cells_vanished == [] and c.regressions
    # Against itself the cell is still missing, with nothing to refuse: neither run has it.
    assert compare.compare(load_run(died), load_run(died)).cells_still_missing == ["7.2-n"]
