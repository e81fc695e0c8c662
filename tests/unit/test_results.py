from __future__ import annotations

import datetime
import json
import time

import pytest

from lab.model.shards import WHOLE, ShardPlan
from lab.results.rundir import start_time
from lab.results.summary import CellResult, RunResults, empty_counts, table
from lab.run.matrix import new_run_dir

PLAN = ShardPlan(WHOLE, ("a", "b", "c"), "0123456789abcdef")


def cell(root, name: str, v: str, infra: str | None = None, **counts: int) -> CellResult:
    (root / name).mkdir()
    c = empty_counts() | counts
    return CellResult(
        name=name,
        kernel="debian-stock",
        verdict=v,
        counts=c,
        dir=str(root / name),
        wall_s=1.5,
        infra_error=infra,
    )


def test_summary_is_written_after_each_cell(tmp_path):
    r = RunResults(tmp_path, "quick", "run-1", "tcg", "auto: no KVM", PLAN)
    r.add(cell(tmp_path, "a", "pass", **{"pass": 9}))
    data = json.loads((tmp_path / "summary.json").read_text())
    assert (
        data["scenario"] == "quick" and data["run_id"] == "run-1" and data["accelerator"] == "tcg"
    )
    assert [c["name"] for c in data["cells"]] == ["a"]
    assert set(data["cells"][0]) >= {
        "name",
        "kernel",
        "verdict",
        "counts",
        "boot_to_ssh_s",
        "wall_s",
        "dir",
    }
    r.add(cell(tmp_path, "b", "fail", fail=1))
    assert len(json.loads((tmp_path / "summary.json").read_text())["cells"]) == 2
    assert r.finish() == 1
    assert json.loads((tmp_path / "summary.json").read_text())["exit_code"] == 1


def test_exit_codes(tmp_path):
    r = RunResults(tmp_path, "s", "id", "tcg", "", PLAN)
    assert r.finish() == 0  # nothing unexpected
    r.add(cell(tmp_path, "a", "pass"))
    assert r.exit_code == 0
    r.add(cell(tmp_path, "b", "fail"))
    assert r.exit_code == 1
    # A real failure outweighs a cell the infrastructure failed (git bisect: bad, not skip).
    r.add(cell(tmp_path, "c", "error", infra="boot timeout"))
    assert r.exit_code == 1
    assert r.finish(interrupted=True) == 130
    other = tmp_path / "infra-only"
    other.mkdir()
    infra_only = RunResults(other, "s", "id2", "tcg", "", PLAN)
    infra_only.add(cell(other, "a", "pass"))
    infra_only.add(cell(other, "c", "error", infra="boot timeout"))
    assert infra_only.exit_code == 3


def test_table_lists_cells_and_errors(tmp_path):
    r = RunResults(tmp_path, "s", "id", "tcg", "auto: KVM unusable", PLAN)
    r.add(cell(tmp_path, "debian-stock", "pass", **{"pass": 18, "skip": 26}))
    r.add(cell(tmp_path, "broken", "error", infra="no SSH answer within 1 s"))
    r.cells[0].selftest_compat = ["kselftest-vfio: 0001-fix.patch"]
    text = table(r)
    lines = text.splitlines()
    assert lines[0].split() == [
        "cell",
        "verdict",
        "pass",
        "fail",
        "error",
        "notrun",
        "skip",
        "xfail",
        "xpass",
        "boot",
        "wall",
    ]
    assert lines[1].split()[:7] == ["debian-stock", "pass", "18", "0", "0", "0", "26"]
    assert "broken: no SSH answer within 1 s" in text
    assert (
        "debian-stock: upstream selftests needed compat patch kselftest-vfio: 0001-fix.patch"
        in text
    )
    assert "accelerator: tcg (auto: KVM unusable)" in text


def test_expectations_that_matched_nothing_are_named(tmp_path):
    from lab.model.scenario import Expectation
    from lab.results.records import TestRecord

    r = RunResults(tmp_path, "s", "id", "tcg", "", PLAN)
    r.expectations = [
        Expectation(test="t.known", reason="tracked"),
        Expectation(test="t.gone_*", reason="fixed upstream", cells="*=y"),
    ]
    exp = {"test": "t.known", "cells": "*", "reason": "tracked", "link": ""}
    known = TestRecord("t.known", "xfail", expectation=exp)
    r.set_records("a", [known])
    r.add(cell(tmp_path, "a", "pass"))
    r.finish()
    assert json.loads((tmp_path / "summary.json").read_text())["unused_expectations"] == [
        "t.gone_* (cells *=y)"
    ]
    assert "expectations that matched no test: t.gone_* (cells *=y)" in table(r)


@pytest.fixture
def five_hours_east(monkeypatch):
    """A host clock in UTC+5 (a POSIX TZ string: no time zone database needed)."""
    monkeypatch.setenv("TZ", "LAB-05")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_run_ids_are_utc_as_they_are_read_back(tmp_path, five_hours_east):
    run_id, _ = new_run_dir(tmp_path)
    started = datetime.datetime.fromisoformat(start_time(run_id) or "")
    now = datetime.datetime.now(datetime.UTC)
    assert abs((now - started).total_seconds()) < 60, (run_id, now)
