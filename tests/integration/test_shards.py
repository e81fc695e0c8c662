"""Two shards of a small matrix run for real, then merged: one alone (incomplete), both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import lab

pytestmark = pytest.mark.vm


def test_two_shards_run_and_merge_into_one_run_with_every_cell(results, tmp_path) -> None:
    scenario = tmp_path / "two.yaml"
    # Two kernel entries naming the same stock kernel two ways: two cells in two shards,
    # one kernel to fetch, one snapshot.
    scenario.write_text(
        "kernels: [debian-stock, {source: 'debian-stock:linux-image-amd64', name: again}]\n"
    )
    listed = [lab("list", str(scenario), "--shard", f"{k}/2").stdout for k in (1, 2)]
    assert listed[0].endswith("shard 1/2:\n  debian-stock\n"), listed[0]
    assert listed[1].endswith("shard 2/2:\n  again\n"), listed[1]
    runs = []
    for k in (1, 2):
        root = results / f"shard{k}"
        done = lab("run", str(scenario), "--shard", f"{k}/2", "-k", "bar0", "--results", str(root))
        assert done.returncode == 0, done.stdout + done.stderr
        runs.append((root / "latest").resolve())
    shards = [json.loads((run / "summary.json").read_text()) for run in runs]
    assert [s["shard"] for s in shards] == ["1/2", "2/2"]
    assert all(s["scenario_cells"] == ["debian-stock", "again"] for s in shards)
    assert shards[0]["scenario_hash"] == shards[1]["scenario_hash"]
    # Shard 1 alone is an incomplete night: written, the missing cell named, exit 3.
    alone = lab("merge", str(runs[0]), "--into", str(tmp_path / "alone"))
    assert alone.returncode == 3, alone.stdout + alone.stderr
    assert "missing (promised, in no run): again (no run of shard 2/2)" in alone.stdout
    partial = json.loads((tmp_path / "alone" / "summary.json").read_text())
    assert partial["missing"] == {"cells": ["again"], "shards": ["2/2"]}
    merged = tmp_path / "merged"
    done = lab("merge", *map(str, runs), "--into", str(merged))
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((merged / "summary.json").read_text())
    assert summary["missing"] == {"cells": [], "shards": []}
    names = [c["name"] for c in summary["cells"]]
    assert names == ["debian-stock", "again"]
    for cell in summary["cells"]:
        assert cell["verdict"] == "pass" and cell["counts"]["pass"] >= 1
        assert Path(cell["dir"]).parent == merged
        assert (Path(cell["dir"]) / "results.tap").is_file()
    report = (merged / "report.html").read_text()
    assert all(name in report for name in names)
