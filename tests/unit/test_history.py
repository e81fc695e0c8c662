"""The history of runs over nights: real SQLite, run directories written by RunResults."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lab.core.errors import UsageError
from lab.model.shards import Shard, ShardPlan
from lab.results import history, merge
from lab.results.rundir import load_run
from tests.conftest import lab
from tests.unit.run_fixtures import rec, write_run

CELL = "7.2-iommufd_vfio_container=n"
OLD, NEW = "linux-source-7.2=7.2.12-1", "linux-source-7.2=7.2.13-1"
SAME = {"config": "c1", "qemu": "q1", "payload": "p1", "rootfs": "r1", "suites": "s1",
        "machine": "m1"}  # fmt: skip
KNOWN = {"test": "t.*", "reason": "tracked", "cells": "*", "link": ""}


def night(tmp_path: Path, day: int, identity: dict[str, str], outcomes: dict[str, str]) -> Path:
    """A night's run of one cell; outcome `x` is a known failure that failed (raw fail)."""
    root = tmp_path / f"night{day}"
    root.mkdir(parents=True)
    records = [
        rec(test, "xfail", expectation=KNOWN, raw="fail") if o == "x" else rec(test, o)
        for test, o in outcomes.items()
    ]
    return write_run(root, {CELL: records}, run_id=f"202611{day:02d}-020000-abcd",
                     kernel_identity=identity.get("kernel"), identity=identity)  # fmt: skip


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Four nights, the kernel new from the third: `flaky` breaks with it and recovers
    with nothing changed, `broken` fails from then on, `steady` always passes."""
    path = tmp_path / "history.sqlite"
    for day, kernel, flaky, broken in ((20, OLD, "pass", "pass"), (21, OLD, "pass", "pass"),
                                       (22, NEW, "fail", "fail"), (23, NEW, "pass", "fail")):  # fmt: skip
        outcomes = {"t.flaky": flaky, "t.broken": broken, "t.steady": "pass"}
        history.add(path, load_run(night(tmp_path, day, SAME | {"kernel": kernel}, outcomes)))
    return path


def by_test(db: Path) -> dict[str, history.Series]:
    return {s.test: s for s in history.series(db)}


def test_the_latest_change_decides_and_names_what_changed(db) -> None:
    s = by_test(db)
    assert s["t.flaky"].symbols == "PPFP" and s["t.flaky"].kind == "flaky (1 flip, same identity)"
    assert s["t.broken"].symbols == "PPFF" and s["t.broken"].kind == "regression: kernel changed"
    first = s["t.broken"].first_failed()
    assert first is not None and first.run_id == "20261122-020000-abcd" and first.kernel == NEW
    assert s["t.steady"].kind == "" and s["t.steady"].first_failed() is None


def kind_of(tmp_path: Path, nights: list[tuple[dict[str, str], str]]) -> history.Series:
    """One test over synthetic nights: (what differs from SAME, its outcome) each."""
    path = tmp_path / "history.sqlite"
    for day, (changes, outcome) in enumerate(nights, 1):
        identity = SAME | {"kernel": OLD} | changes
        history.add(path, load_run(night(tmp_path, day, identity, {"t.x": outcome})))
    (series,) = history.series(path)
    return series


def test_an_early_flake_does_not_hide_a_lasting_break_after_a_qemu_change(tmp_path) -> None:
    q2 = {"qemu": "q2"}
    s = kind_of(tmp_path, [({}, "pass"), ({}, "fail"), ({}, "pass"), ({}, "pass"),
                           (q2, "fail"), (q2, "fail"), (q2, "fail")])  # fmt: skip
    assert s.kind == "regression: qemu changed"
    first = s.first_failed()
    assert first is not None and first.run_id == "20261105-020000-abcd"


def test_a_break_with_a_new_payload_is_a_regression_naming_it(tmp_path) -> None:
    p2 = {"payload": "p2"}
    s = kind_of(tmp_path, [({}, "pass"), ({}, "pass"), (p2, "error"), (p2, "error")])
    assert s.kind == "regression: payload changed"


def test_a_genuine_flake_counts_its_flips(tmp_path) -> None:
    s = kind_of(tmp_path, [({}, o) for o in ("pass", "fail", "pass", "fail", "pass", "fail")])
    assert s.kind == "flaky (5 flips, same identity)"


def test_mixed_changes(tmp_path) -> None:
    """A regression with two components at once, fixed by a third, then flaky after that
    third changed: only the flips since it count."""
    new = {"kernel": NEW, "qemu": "q2"}
    fixed = new | {"rootfs": "r2"}
    nights = [({}, "fail"), ({}, "pass"), (new, "fail"), (new, "fail"), (fixed, "pass")]
    assert kind_of(tmp_path / "a", nights).kind == "fixed: rootfs changed"
    flaky = [*nights, (fixed, "fail"), (fixed, "pass")]
    assert kind_of(tmp_path / "b", flaky).kind == "flaky (2 flips, same identity)"
    both = [({}, "pass"), (new, "fail")]
    assert kind_of(tmp_path / "c", both).kind == "regression: kernel, qemu changed"


def test_an_expectation_added_is_no_flip(tmp_path) -> None:
    """Judged on raw outcomes: a failure that became a known failure still fails."""
    s = kind_of(tmp_path, [({}, "fail"), ({}, "x"), ({}, "x")])
    assert s.symbols == "Fxx" and s.kind == "known failure"


def test_a_flip_between_nights_that_did_not_record_the_identity_stays_open(tmp_path) -> None:
    """Runs from before the identity was recorded know the kernel alone: not flaky."""
    path = tmp_path / "history.sqlite"
    for day, outcome in ((1, "pass"), (2, "fail")):
        root = tmp_path / f"old{day}"
        root.mkdir()
        run = write_run(root, {CELL: [rec("t.x", outcome)]},
                        run_id=f"202611{day:02d}-020000-abcd", kernel_identity=OLD)  # fmt: skip
        history.add(path, load_run(run))
    (s,) = history.series(path)
    assert s.kind == (
        "regression? (config, qemu, payload, rootfs, suites, machine not recorded, the rest "
        "the same)"
    )


def test_a_database_from_before_gains_the_new_columns(tmp_path) -> None:
    path = tmp_path / "history.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE runs (run_id TEXT PRIMARY KEY, scenario TEXT, started TEXT, dir TEXT,"
        " exit_code INTEGER);"
        "CREATE TABLE cells (run_id TEXT, cell TEXT, kernel TEXT, verdict TEXT, wall_s REAL,"
        " passed INTEGER, total INTEGER, PRIMARY KEY (run_id, cell));"
        "CREATE TABLE results (run_id TEXT, cell TEXT, test TEXT, outcome TEXT, reason TEXT,"
        " PRIMARY KEY (run_id, cell, test));"
        "INSERT INTO runs VALUES ('20261101-020000-abcd', 's', '2026-11-01T02:00:00', 'd', 0);"
        f"INSERT INTO cells VALUES ('20261101-020000-abcd', '{CELL}', '{OLD}', 'pass', 1, 1, 1);"
        f"INSERT INTO results VALUES ('20261101-020000-abcd', '{CELL}', 't.x', 'pass', '');"
    )
    conn.commit()
    conn.close()
    history.add(path, load_run(night(tmp_path, 2, SAME | {"kernel": OLD}, {"t.x": "fail"})))
    (s,) = history.series(path)
    assert s.symbols == "PF" and s.nights[0].identity == {} and s.kind.startswith("regression? (")


def test_adding_a_run_again_stores_it_once(db, tmp_path) -> None:
    history.add(db, load_run(tmp_path / "night22" / "run"))
    assert len(by_test(db)["t.broken"].nights) == 4


def test_a_cell_missing_from_a_merged_night_is_absent_not_passed(db, tmp_path) -> None:
    (tmp_path / "shard").mkdir()
    shard = write_run(tmp_path / "shard", {"other": [rec("t.steady")]},
                      run_id="20261123-020000-abcd",
                      plan=ShardPlan(Shard(1, 2), (CELL, "other"), "0123456789abcdef"))  # fmt: skip
    history.add(db, merge.merge([shard], tmp_path / "merged"))
    steady = next(s for s in history.series(db) if s.test == "t.steady" and s.cell == CELL)
    assert steady.symbols == "PPPP-" and steady.nights[-1].kernel is None
    assert [len(t.points) for t in history.trends(db, CELL)] == [4]


def test_trends_per_cell(db) -> None:
    (trend,) = history.trends(db)
    assert trend.cell == CELL
    assert [round(rate, 2) for _, rate, _ in trend.points] == [1.0, 1.0, 0.33, 0.67]
    assert "<polyline" in history.svg(
        trend
    ) and 'aria-label="pass rate 67% over 4 nights"' in history.svg(trend)


def test_show_and_the_report_trend_through_the_cli(db, tmp_path) -> None:
    shown = lab("history", "show", "--db", str(db))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert any(
        line.startswith("PPFP ") and "flaky (1 flip, same identity)" in line and "t.flaky" in line
        for line in lines
    )
    assert any(
        "regression: kernel changed" in line and "2026-11-22T02:00:00" in line
        and "t.broken" in line
        for line in lines
    )  # fmt: skip
    assert not any("t.steady" in line for line in lines), "always passing: shown with --all only"
    assert any(f"{CELL}: pass rate 100% 100% 33% 67%" in line for line in lines)
    only = lab("history", "show", "--db", str(db), "--test", "t.b*", "--all").stdout
    assert "t.broken" in only and "t.flaky" not in only
    run = tmp_path / "night22" / "run"
    assert lab("report", str(run), "--history", str(db)).returncode == 0
    html = (run / "report.html").read_text()
    assert "<h2 id=trend>Trend</h2>" in html and "<svg" in html


def test_a_missing_or_foreign_database_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no history there yet"):
        history.series(tmp_path / "none.sqlite")
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not sqlite at all, but long enough to have a header " * 10)
    with pytest.raises(UsageError, match="not a vfio-lab history"):
        history.series(junk)
    done = lab("history", "show", "--db", str(tmp_path / "none.sqlite"))
    assert done.returncode == 2 and "history add" in done.stderr
