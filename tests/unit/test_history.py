"""The history of runs over nights: real SQLite, run directories written by RunResults."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.core.errors import UsageError
from lab.results import history, merge
from lab.results.rundir import load_run
from lab.spec.shards import Shard, ShardPlan
from tests.conftest import lab
from tests.unit.run_fixtures import rec, write_run

CELL = "7.2-iommufd_vfio_container=n"
OLD, NEW = "linux-source-7.2=7.2.12-1", "linux-source-7.2=7.2.13-1"


def night(tmp_path: Path, day: int, kernel: str, outcomes: dict[str, str]) -> Path:
    root = tmp_path / f"night{day}"
    root.mkdir()
    records = [rec(test, outcome) for test, outcome in outcomes.items()]
    return write_run(root, {CELL: records}, run_id=f"202611{day:02d}-020000-abcd",
                     kernel_identity=kernel)  # fmt: skip


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Three nights: `flaky` flips with the kernel unchanged, `broken` fails from the
    night the kernel changed, `steady` always passes."""
    path = tmp_path / "history.sqlite"
    for day, kernel, flaky, broken in ((20, OLD, "pass", "pass"), (21, OLD, "fail", "pass"),
                                       (22, NEW, "pass", "fail")):  # fmt: skip
        run = night(
            tmp_path, day, kernel, {"t.flaky": flaky, "t.broken": broken, "t.steady": "pass"}
        )
        history.add(path, load_run(run))
    return path


def by_test(db: Path) -> dict[str, history.Series]:
    return {s.test: s for s in history.series(db)}


def test_a_flip_with_the_kernel_unchanged_is_flaky_one_with_a_new_kernel_a_regression(db) -> None:
    s = by_test(db)
    assert s["t.flaky"].symbols == "PFP" and s["t.flaky"].kind == "flaky"
    assert s["t.flaky"].flips() == (1, 1), "20->21 same kernel, 21->22 a new one"
    assert s["t.broken"].symbols == "PPF" and s["t.broken"].kind == "regression"
    first = s["t.broken"].first_failed()
    assert first is not None and first.run_id == "20261122-020000-abcd" and first.kernel == NEW
    assert s["t.steady"].kind == "" and s["t.steady"].first_failed() is None


def test_adding_a_run_again_stores_it_once(db, tmp_path) -> None:
    history.add(db, load_run(tmp_path / "night22" / "run"))
    assert len(by_test(db)["t.broken"].nights) == 3


def test_a_cell_missing_from_a_merged_night_is_absent_not_passed(db, tmp_path) -> None:
    (tmp_path / "shard").mkdir()
    shard = write_run(tmp_path / "shard", {"other": [rec("t.steady")]},
                      run_id="20261123-020000-abcd",
                      plan=ShardPlan(Shard(1, 2), (CELL, "other"), "0123456789abcdef"))  # fmt: skip
    history.add(db, merge.merge([shard], tmp_path / "merged"))
    steady = next(s for s in history.series(db) if s.test == "t.steady" and s.cell == CELL)
    assert steady.symbols == "PPP-" and steady.nights[-1].kernel is None
    assert [len(t.points) for t in history.trends(db, CELL)] == [3]


def test_trends_per_cell(db) -> None:
    (trend,) = history.trends(db)
    assert trend.cell == CELL
    assert [round(rate, 2) for _, rate, _ in trend.points] == [1.0, 0.67, 0.67]
    assert "<polyline" in history.svg(
        trend
    ) and 'aria-label="pass rate 67% over 3 nights"' in history.svg(trend)


def test_show_and_the_report_trend_through_the_cli(db, tmp_path) -> None:
    shown = lab("history", "show", "--db", str(db))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert any(line.startswith("PFP ") and "flaky" in line and "t.flaky" in line for line in lines)
    assert any(
        "regression" in line and "2026-11-22T02:00:00" in line and "t.broken" in line
        for line in lines
    )
    assert not any("t.steady" in line for line in lines), "always passing: shown with --all only"
    assert any(f"{CELL}: pass rate 100% 67% 67%" in line for line in lines)
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
