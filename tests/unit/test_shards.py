"""Shards of a matrix and merging their runs: pure logic and real run directories."""

from __future__ import annotations

import json
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab.cli import build_parser
from lab.cli.common import selected
from lab.cli.run import sharded
from lab.core.cache import Cache
from lab.core.errors import UsageError
from lab.model import scenario
from lab.model.shards import (
    BUILD_MIN,
    CELL_MIN,
    SETUP_MIN,
    Shard,
    durations,
    minutes,
    parse_shard,
    scenario_hash,
    shard_cells,
    split,
)
from lab.results import merge
from lab.results.rundir import load_run
from lab.run.matrix import RunOptions, ScenarioRun
from tests.conftest import lab
from tests.unit.run_fixtures import CELLS, SCENARIO_HASH, rec, shard_run, write_run

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


def test_a_shards_time_limit_counts_setup_each_tree_it_builds_and_each_cell(
    matrix: Path, tmp_path: Path
) -> None:
    cells = expand(matrix)  # two trees built from source, two cells each
    assert minutes(cells) == SETUP_MIN + 2 * BUILD_MIN + 4 * CELL_MIN  # 140: a ten already
    assert minutes(cells[:1]) == 100, "20 + 60 + 15, rounded up to ten minutes"
    assert minutes([]) == SETUP_MIN, "an empty shard only sets up"
    stock = tmp_path / "stock.yaml"
    stock.write_text("kernels: [debian-stock]\n")
    assert minutes(scenario.expand(scenario.load(stock))) == 40, "a stock kernel is not built"


def test_recorded_wall_times_replace_the_allowance_with_a_margin(matrix: Path) -> None:
    cells = expand(matrix)
    recorded = {cells[0].name: 1800.0, cells[1].name: 600.0}  # 30 and 10 minutes
    # 20 + 2 trees x 60 + 2 x (30 + 10) + 2 x 2 x 20 (two cells not recorded: the mean)
    assert minutes(cells, recorded) == 300
    assert minutes(cells, {c.name: 6.0 for c in cells}) == 150, "0.2 min a cell, rounded up"


def test_durations_read_a_runs_summary(tmp_path: Path) -> None:
    run = write_run(tmp_path, {"a": [rec("t")]})
    assert durations(run) == {"a": 42.0}
    with pytest.raises(UsageError, match=r"not a run's summary\.json"):
        durations(tmp_path)


PATCHED = """\
name: night
kernels:
  - {source: "debian:7.2", patches: [fix.patch]}
machine: {memory: 2G}
"""
FIX = "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n"


def patched(where: Path, yaml: str = PATCHED, fix: str = FIX) -> str:
    """The hash of a scenario file with one patch, written under `where`."""
    where.mkdir()
    (where / "s.yaml").write_text(yaml)
    (where / "fix.patch").write_text(fix)
    cells = scenario.expand(scenario.load(where / "s.yaml"))
    assert [c.name for c in cells] == ["7.2+fix"]
    return scenario_hash(cells)


def test_the_scenario_hash_tells_versions_apart_not_checkouts(tmp_path: Path) -> None:
    first = patched(tmp_path / "a")
    assert patched(tmp_path / "b") == first, "another checkout of the same scenario"
    assert patched(tmp_path / "c", PATCHED.replace("2G", "3G")) != first, "another machine"
    assert patched(tmp_path / "d", fix=FIX.replace("+b", "+c")) != first, "another patch"


def with_payload(where: Path, test: str) -> str:
    """The hash of a scenario file whose payload directory (beside it) holds `test`."""
    (where / "payload").mkdir(parents=True)
    (where / "payload" / "night_test.py").write_text(test)
    (where / "s.yaml").write_text("name: night\npayload: {tests: payload}\n")
    return scenario_hash(scenario.expand(scenario.load(where / "s.yaml")))


def test_the_scenario_hash_counts_a_payload_directory_by_its_content(tmp_path: Path) -> None:
    first = with_payload(tmp_path / "a", "def test_x(): pass\n")
    assert with_payload(tmp_path / "b", "def test_x(): pass\n") == first, "another checkout"
    assert with_payload(tmp_path / "c", "def test_x(): assert 0\n") != first, "another payload"


LOCAL_AND_DEBIAN = "kernels: [local:linux, debian:7.2]\n"


def git(tree: Path, *args: str) -> None:
    argv = ["git", "-c", "user.email=a@b", "-c", "user.name=a", "-C", str(tree), *args]
    subprocess.run(argv, check=True, capture_output=True)


def local_tree(where: Path) -> Path:
    """A kernel checkout (as `local:` checks one) beside a scenario that builds it."""
    tree = where / "linux"
    tree.mkdir(parents=True)
    (tree / "Makefile").write_text("all:\n")
    (tree / "Kconfig").write_text("config VFIO\n\tbool\n")
    git(where, "init", "-q", "linux")
    git(tree, "add", ".")
    git(tree, "commit", "-qm", "base")
    (where / "s.yaml").write_text(LOCAL_AND_DEBIAN)
    return tree


def run_shard(where: Path, k: int) -> Path:
    """Shard k/2 of the scenario beside the tree, run (no cell) into where/k."""
    args = build_parser().parse_args(["run", str(where / "s.yaml"), "--shard", f"{k}/2"])
    s = scenario.load(where / "s.yaml")
    part_of, _ = sharded(s, args)
    ScenarioRun(s, RunOptions(where / str(k)), Cache(where / "cache")).start(part_of).finish()
    return (where / str(k) / "latest").resolve()


def test_a_local_tree_counts_by_what_it_holds_so_an_edit_between_shards_parts_them(
    tmp_path: Path,
) -> None:
    tree = local_tree(tmp_path)
    one, two = run_shard(tmp_path, 1), run_shard(tmp_path, 2)
    assert merge.merge([one, two], tmp_path / "same").summary["scenario_hash"]
    (tree / "vfio.c").write_text("int x;\n")  # the same path, another tree
    edited = run_shard(tmp_path, 2)
    with pytest.raises(UsageError, match="different versions of scenario s"):
        merge.merge([one, edited], tmp_path / "m")


def test_the_scenario_hash_needs_each_local_trees_identity(tmp_path: Path) -> None:
    tree = local_tree(tmp_path)
    cells = scenario.expand(scenario.load(tmp_path / "s.yaml"))
    with pytest.raises(ValueError, match=f"local:{tree}: the scenario hash needs"):
        scenario_hash(cells)
    first = scenario_hash(cells, {str(tree): "git:1"})
    assert scenario_hash(cells, {str(tree): "git:2"}) != first
    assert scenario_hash(cells, {str(tree): "git:1"}) == first


def test_a_run_records_which_shard_of_which_cells_it_is(tmp_path: Path, matrix: Path) -> None:
    args = build_parser().parse_args(["run", str(matrix), "--only", "*=y", "--shard", "2/2"])
    s = scenario.load(matrix)
    part_of, cells = sharded(s, args)
    promised = ["6.12-iommufd_vfio_container=y", "7.2-iommufd_vfio_container=y"]
    assert [c.name for c in cells] == promised[1:]
    run = ScenarioRun(s, RunOptions(tmp_path / "results"), Cache(tmp_path / "cache"))
    run.start(part_of).finish()
    summary = json.loads((tmp_path / "results" / "latest" / "summary.json").read_text())
    assert summary["shard"] == "2/2"
    assert summary["scenario_cells"] == promised, "what --only promised, over all shards"
    assert summary["scenario_hash"] == scenario_hash(selected(s, ["*=y"]))
    whole, _ = sharded(s, build_parser().parse_args(["run", str(matrix)]))
    assert whole.shard == Shard(1, 1) and len(whole.cells) == 4


def two_shards(tmp_path: Path, second: str = "fail") -> tuple[Path, Path]:
    one = shard_run(tmp_path / "1", 1, 2, {"7.2-y": [rec("t.a"), rec("t.b")]})
    two = shard_run(tmp_path / "2", 2, 2, {"7.2-n": [rec("t.a"), rec("t.b", second)]})
    return one, two


def test_merged_runs_are_one_run_with_every_cell(tmp_path: Path) -> None:
    one, two = two_shards(tmp_path)
    merged = merge.merge([one, two], tmp_path / "merged")
    assert [c.name for c in merged.cells] == ["7.2-y", "7.2-n"]
    again = load_run(tmp_path / "merged")
    assert [c.name for c in again.cells] == ["7.2-y", "7.2-n"]
    assert again.summary["exit_code"] == 1, "one shard's failure fails the merged run"
    assert [m["shard"] for m in again.summary["merged_from"]] == ["1/2", "2/2"]
    assert again.summary["started"] == "2026-11-21T00:00:00+00:00", "the earliest shard's"
    # The merged run is the whole split, complete.
    assert again.summary["shard"] == "1/1" and again.summary["scenario_cells"] == list(CELLS)
    assert again.summary["scenario_hash"] == SCENARIO_HASH
    assert again.summary["missing"] == {"cells": [], "shards": []} and again.missing == []
    junit = (tmp_path / "merged" / "junit.xml").read_text()
    assert 'name="7.2-y"' in junit and 'name="7.2-n"' in junit
    assert "7.2-n" in (tmp_path / "merged" / "report.html").read_text()
    cell_dir = Path(again.cells[1].summary["dir"])
    assert cell_dir.parent == tmp_path / "merged" and (cell_dir / "tests.json").is_file()


def test_one_shard_alone_is_an_incomplete_night_that_names_what_is_missing(
    tmp_path: Path,
) -> None:
    one, _ = two_shards(tmp_path)
    done = lab("merge", str(one), "--into", str(tmp_path / "m"))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "missing (promised, in no run): 7.2-n (no run of shard 2/2)" in done.stdout
    merged = load_run(tmp_path / "m")
    assert merged.summary["missing"] == {"cells": ["7.2-n"], "shards": ["2/2"]}
    assert merged.summary["exit_code"] == 3 and merged.missing == ["7.2-n"]
    suites = {s.get("name"): s for s in ET.parse(tmp_path / "m" / "junit.xml").iter("testsuite")}
    assert suites["7.2-n"].get("errors") == "1", "a missing cell is an error, not absent"
    assert "never ran" in suites["7.2-n"].find("testcase/error").get("message")
    html = (tmp_path / "m" / "report.html").read_text()
    assert "<tr class=r-fail><td>7.2-n<td><span class='o o-fail'>MISSING</span>" in html
    assert "<span class='o o-fail'>CELLS MISSING: 1</span>" in html


def test_a_shard_that_lost_cells_leaves_them_missing_and_failures_still_outweigh(
    tmp_path: Path,
) -> None:
    # Shard 2/2 came, but interrupted before its cell (or split by other --durations).
    one = shard_run(tmp_path / "1", 1, 2, {"7.2-y": [rec("t.a", "fail")]})
    two = shard_run(tmp_path / "2", 2, 2, {})
    merged = merge.merge([one, two], tmp_path / "m")
    assert merged.summary["missing"] == {"cells": ["7.2-n"], "shards": []}
    assert merged.summary["exit_code"] == 1, "a failed test outweighs a cell that never ran"


def test_merge_refuses_shards_of_two_different_splits(tmp_path: Path) -> None:
    one = shard_run(tmp_path / "1", 1, 2, {"7.2-y": [rec("t.a")]})
    other = shard_run(tmp_path / "2", 2, 3, {"7.2-n": [rec("t.a")]})
    with pytest.raises(
        UsageError, match=r"different splits: .*1/run is shard 1/2, .*2/run is shard 2/3"
    ):
        merge.merge([one, other], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_merge_refuses_two_versions_of_a_scenario_with_one_name(tmp_path: Path) -> None:
    one = shard_run(tmp_path / "1", 1, 2, {"7.2-y": [rec("t.a")]})
    newer = shard_run(tmp_path / "2", 2, 2, {"7.2-n": [rec("t.a")]}, digest="fedcba9876543210")
    with pytest.raises(
        UsageError,
        match=f"different versions of scenario two-cells .scenario_hash {SCENARIO_HASH} and "
        "fedcba9876543210",
    ):
        merge.merge([one, newer], tmp_path / "m")


def test_merge_refuses_shards_of_different_selections(tmp_path: Path) -> None:
    one = shard_run(tmp_path / "1", 1, 2, {"7.2-y": [rec("t.a")]})
    narrower = shard_run(tmp_path / "2", 2, 2, {"7.2-x": [rec("t.a")]}, ("7.2-y", "7.2-x"))
    with pytest.raises(
        UsageError,
        match=r"promised different cells .*: only .*1/run has 7\.2-n; only .*2/run has 7\.2-x",
    ):
        merge.merge([one, narrower], tmp_path / "m")


def test_merge_refuses_the_same_shard_twice(tmp_path: Path) -> None:
    # Runners balanced by different --durations: two runs that both say 1/2.
    one = shard_run(tmp_path / "1", 1, 2, {"7.2-y": [rec("t.a")]})
    again = shard_run(tmp_path / "2", 1, 2, {"7.2-n": [rec("t.a")]})
    with pytest.raises(UsageError, match=r"1/run and .*2/run are both shard 1/2"):
        merge.merge([one, again], tmp_path / "m")
    with pytest.raises(UsageError, match=r"are both shard 1/2"):
        merge.merge([one, one], tmp_path / "m")


def test_merge_refuses_a_cell_its_run_did_not_promise(tmp_path: Path) -> None:
    one = shard_run(tmp_path / "1", 1, 2, {"7.2-y": [rec("t.a")], "7.2-z": []})
    two = shard_run(tmp_path / "2", 2, 2, {"7.2-n": [rec("t.a")]})
    with pytest.raises(UsageError, match=r"1/run has cells its scenario_cells lacks: 7\.2-z"):
        merge.merge([one, two], tmp_path / "m")


def test_merge_refuses_a_run_that_does_not_say_what_it_is_part_of(tmp_path: Path) -> None:
    one, two = two_shards(tmp_path)
    summary = json.loads((two / "summary.json").read_text())
    for field in ("shard", "scenario_cells", "scenario_hash"):
        del summary[field]
    (two / "summary.json").write_text(json.dumps(summary))
    done = lab("merge", str(one), str(two), "--into", str(tmp_path / "m"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{two / 'summary.json'} has no shard, scenario_cells, scenario_hash" in done.stderr
    summary["shard"], summary["scenario_cells"], summary["scenario_hash"] = "2/2", "7.2-n", "h"
    (two / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(UsageError, match="scenario_cells is not a list of cell names"):
        merge.merge([one, two], tmp_path / "m")
    summary["scenario_cells"], summary["shard"] = list(CELLS), "3/2"
    (two / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(UsageError, match=r"summary\.json: shard 3/2: expected K/N"):
        merge.merge([one, two], tmp_path / "m")


def test_merge_refuses_a_cell_twice_and_a_non_empty_target(tmp_path: Path) -> None:
    one, two = two_shards(tmp_path)
    doubled = shard_run(tmp_path / "3", 2, 2, {"7.2-y": [rec("t.a")]})
    with pytest.raises(UsageError, match=r"cell 7\.2-y is in both"):
        merge.merge([one, doubled], tmp_path / "m1")
    (tmp_path / "m2").mkdir()
    (tmp_path / "m2" / "x").write_text("")
    with pytest.raises(UsageError, match="not empty"):
        merge.merge([one, two], tmp_path / "m2")


def test_merge_cli_exits_with_the_merged_code(tmp_path: Path) -> None:
    one, two = two_shards(tmp_path, second="pass")
    done = lab("merge", str(one), str(two), "--into", str(tmp_path / "m"))
    assert done.returncode == 0, done.stderr
    assert "cells 7.2-y, 7.2-n" in done.stdout and "missing" not in done.stdout
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
    assert twice.returncode == 2 and "are both shard 1/2" in twice.stderr
    alone = lab("list", str(matrix), "--durations", str(one))
    assert (
        alone.returncode == 2
        and "--durations balances shards: give --shard K/N too" in alone.stderr
    )
