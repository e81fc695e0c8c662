"""Shards of a matrix and merging their runs: pure logic and real run directories."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lab.core.errors import UsageError
from lab.results import merge
from lab.results.rundir import load_run
from lab.spec import scenario
from lab.spec.shards import Shard, durations, parse_shard, shard_cells, split
from tests.conftest import lab
from tests.unit.run_fixtures import rec, write_run

TWO_TREES = """\
kernels: [debian:6.12, debian:7.2]
fragments: [iommufd]
config:
  IOMMUFD_VFIO_CONTAINER: [y, n]
"""


@pytest.fixture
def matrix(tmp_path: Path) -> Path:
    path = tmp_path / "two-trees.yaml"
    path.write_text(TWO_TREES)
    return path


def expand(matrix: Path) -> list[scenario.Cell]:
    return scenario.expand(scenario.load(matrix))  # 6.12 and 7.2, each y and n


def names(shard: list[scenario.Cell]) -> list[str]:
    return [c.name for c in shard]


def test_each_kernel_tree_stays_in_one_shard_and_every_cell_is_in_one(matrix: Path) -> None:
    shards = split(expand(matrix), 2)
    assert names(shards[0]) == ["6.12-iommufd_vfio_container=y", "6.12-iommufd_vfio_container=n"]
    assert names(shards[1]) == ["7.2-iommufd_vfio_container=y", "7.2-iommufd_vfio_container=n"]
    assert split(expand(matrix), 2) == shards, "deterministic"


def test_more_shards_than_trees_leaves_some_empty(matrix: Path) -> None:
    shards = split(expand(matrix), 3)
    assert [len(s) for s in shards] == [2, 2, 0]


def test_recorded_durations_balance_the_split(matrix: Path) -> None:
    recorded = {
        "6.12-iommufd_vfio_container=y": 1000.0,
        "6.12-iommufd_vfio_container=n": 1000.0,
        "7.2-iommufd_vfio_container=y": 100.0,
        "7.2-iommufd_vfio_container=n": 100.0,
    }
    all_cells = [*expand(matrix), *scenario.expand(scenario.load(scenario.locate("quick")))]
    # 6.12 weighs 2000 s; the stock kernel, unknown, the mean (550 s); 7.2 200 s.
    shards = split(all_cells, 2, recorded)
    assert names(shards[0]) == names(expand(matrix))[:2]
    assert names(shards[1]) == [*names(expand(matrix))[2:], "debian-stock"]


def test_shard_selects_the_kth(matrix: Path) -> None:
    assert names(shard_cells(expand(matrix), Shard(2, 2))) == names(split(expand(matrix), 2)[1])


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/0"])
def test_a_bad_shard_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match=f"^{re.escape(text)}: expected K/N"):
        parse_shard(text)


def test_durations_read_a_runs_summary(tmp_path: Path) -> None:
    run = write_run(tmp_path, {"a": [rec("t")]})
    assert durations(run) == {"a": 42.0}
    with pytest.raises(UsageError, match=r"not a run's summary\.json"):
        durations(tmp_path)


def two_shards(tmp_path: Path, second: str = "fail") -> tuple[Path, Path]:
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    one = write_run(tmp_path / "1", {"7.2-y": [rec("t.a"), rec("t.b")]})
    two = write_run(tmp_path / "2", {"7.2-n": [rec("t.a"), rec("t.b", second)]})
    return one, two


def test_merged_runs_are_one_run_with_every_cell(tmp_path: Path) -> None:
    one, two = two_shards(tmp_path)
    merged = merge.merge([one, two], tmp_path / "merged")
    assert [c.name for c in merged.cells] == ["7.2-y", "7.2-n"]
    again = load_run(tmp_path / "merged")
    assert [c.name for c in again.cells] == ["7.2-y", "7.2-n"]
    assert again.summary["exit_code"] == 1, "one shard's failure fails the merged run"
    assert len(again.summary["merged_from"]) == 2
    assert again.summary["started"] == "2026-11-21T00:00:00+00:00", "the earliest shard's"
    junit = (tmp_path / "merged" / "junit.xml").read_text()
    assert 'name="7.2-y"' in junit and 'name="7.2-n"' in junit
    assert "7.2-n" in (tmp_path / "merged" / "report.html").read_text()
    cell_dir = Path(again.cells[1].summary["dir"])
    assert cell_dir.parent == tmp_path / "merged" and (cell_dir / "tests.json").is_file()


def test_merge_refuses_a_cell_twice_and_a_non_empty_target(tmp_path: Path) -> None:
    one, two = two_shards(tmp_path)
    with pytest.raises(UsageError, match=r"cell 7\.2-y is in both"):
        merge.merge([one, one], tmp_path / "m1")
    (tmp_path / "m2").mkdir()
    (tmp_path / "m2" / "x").write_text("")
    with pytest.raises(UsageError, match="not empty"):
        merge.merge([one, two], tmp_path / "m2")


def test_merge_cli_exits_with_the_merged_code(tmp_path: Path) -> None:
    one, two = two_shards(tmp_path, second="pass")
    done = lab("merge", str(one), str(two), "--into", str(tmp_path / "m"))
    assert done.returncode == 0, done.stderr
    assert "cells 7.2-y, 7.2-n" in done.stdout
    assert json.loads((tmp_path / "m" / "summary.json").read_text())["exit_code"] == 0


def test_list_shows_a_shard(matrix: Path) -> None:
    done = lab("list", str(matrix), "--shard", "2/2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == [
        "shard 2/2:",
        "  7.2-iommufd_vfio_container=y",
        "  7.2-iommufd_vfio_container=n",
    ]
    bad = lab("list", str(matrix), "--shard", "3/2")
    assert bad.returncode == 2 and "3/2: expected K/N with 1 <= K <= N" in bad.stderr


def test_the_cli_refuses_a_bad_merge_and_durations_without_a_shard(tmp_path: Path, matrix) -> None:
    one, _ = two_shards(tmp_path)
    twice = lab("merge", str(one), str(one), "--into", str(tmp_path / "m"))
    assert twice.returncode == 2 and "cell 7.2-y is in both" in twice.stderr
    alone = lab("list", str(matrix), "--durations", str(one))
    assert (
        alone.returncode == 2
        and "--durations balances shards: give --shard K/N too" in alone.stderr
    )
