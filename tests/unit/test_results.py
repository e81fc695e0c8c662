from __future__ import annotations

import json

from lab.results import CellResult, RunResults, empty_counts, table, verdict
from lab.tap import parse_text


def cell(name: str, v: str, infra: str | None = None, **counts: int) -> CellResult:
    c = empty_counts() | counts
    return CellResult(
        name=name,
        kernel="debian-stock",
        verdict=v,
        counts=c,
        dir=f"/r/{name}",
        wall_s=1.5,
        infra_error=infra,
    )


def test_verdicts():
    assert verdict(parse_text("1..2\nok 1 a\nok 2 b # SKIP x\n")) == "pass"
    assert verdict(parse_text("1..2\nok 1 a\nnot ok 2 b\n")) == "fail"
    assert verdict(parse_text("1..1\nok 1 a # TODO known\n")) == "fail"  # XPASS is unexpected
    assert verdict(parse_text("1..1\nnot ok 1 a # TODO known\n")) == "pass"  # XFAIL is expected
    assert verdict(parse_text("1..3\nok 1 a\n")) == "error"
    assert verdict(parse_text("")) == "error"


def test_summary_is_written_after_each_cell(tmp_path):
    r = RunResults(tmp_path, "quick", "run-1", "tcg", "auto: no KVM")
    r.add(cell("a", "pass", **{"pass": 9}))
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
    r.add(cell("b", "fail", fail=1))
    assert len(json.loads((tmp_path / "summary.json").read_text())["cells"]) == 2
    assert r.finish() == 1
    assert json.loads((tmp_path / "summary.json").read_text())["exit_code"] == 1


def test_exit_codes(tmp_path):
    r = RunResults(tmp_path, "s", "id", "tcg", "")
    assert r.finish() == 0  # nothing unexpected
    r.add(cell("a", "pass"))
    assert r.exit_code == 0
    r.add(cell("b", "fail"))
    assert r.exit_code == 1
    r.add(cell("c", "error", infra="boot timeout"))
    assert r.exit_code == 3
    assert r.finish(interrupted=True) == 130


def test_table_lists_cells_and_errors(tmp_path):
    r = RunResults(tmp_path, "s", "id", "tcg", "auto: KVM unusable")
    r.add(cell("debian-stock", "pass", **{"pass": 18, "skip": 26}))
    r.add(cell("broken", "error", infra="no SSH answer within 1 s"))
    text = table(r)
    lines = text.splitlines()
    assert lines[0].split() == [
        "cell",
        "verdict",
        "pass",
        "fail",
        "skip",
        "xfail",
        "error",
        "boot",
        "wall",
    ]
    assert lines[1].split()[:7] == ["debian-stock", "pass", "18", "0", "26", "0", "0"]
    assert "broken: no SSH answer within 1 s" in text
    assert "accelerator: tcg (auto: KVM unusable)" in text
