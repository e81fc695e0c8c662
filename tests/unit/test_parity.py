"""`vfio-lab parity`: the lab's payload against the kernel's C suites, on run directories
written by the real RunResults; and parity as a gate, through a cell's real triage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.core.errors import UsageError
from lab.core.progress import SILENT
from lab.model import scenario, shards
from lab.results import parity
from lab.results.rundir import load_run
from lab.results.summary import CellResult, RunResults, empty_counts
from lab.results.tap import parse_text
from lab.run.cell import CellRun, PayloadOutcome
from tests.conftest import lab
from tests.unit.run_fixtures import rec, write_run

KNOWN = {"test": "mmio.*", "reason": "iommufd cannot map MMIO", "cells": "*", "link": ""}


def c_rec(test_id: str, outcome: str = "pass", **kw: object):
    return rec(f"kselftest-vfio:{test_id}", outcome, suite="kselftest-vfio", **kw)


def cells():
    return {
        "7.2-y": [
            rec("dma.iommufd.map"),
            rec("mmio.type1.map_full_bar", "xfail", expectation=KNOWN, raw="fail"),
            rec("lab_only.case"),
            c_rec("dma.iommufd.map"),
            c_rec("mmio.type1.map_full_bar", "xfail", expectation=KNOWN, raw="fail"),
            c_rec("driver.iommufd.memcpy_storm"),
            rec("iommufd.simple_close", suite="kselftest-iommu"),
        ],
        "7.2-n": [rec("dma.iommufd.map"), c_rec("dma.iommufd.map", "fail")],
        "lab-only-cell": [rec("dma.iommufd.map")],
    }


def one_cell(tmp_path: Path, *records) -> parity.CellParity:
    (p,) = parity.run_parity(load_run(write_run(tmp_path, {"c": list(records)})))
    return p


def pairs(p: parity.CellParity) -> dict[tuple[str, str], int]:
    return {(pair.lab, pair.other): n for pair, n in p.pairs.items()}


def test_shared_ids_agree_disagree_and_only_one_suite(tmp_path):
    got = {p.cell: p for p in parity.run_parity(load_run(write_run(tmp_path, cells())))}
    assert set(got) == {"7.2-y", "7.2-n"}  # the cell that ran no C suite has no parity
    y = got["7.2-y"]
    assert (y.shared, y.agree, y.disagree) == (2, 2, [])
    assert pairs(y) == {("pass", "pass"): 1, ("xfail(fail)", "xfail(fail)"): 1}
    assert y.only == {
        "kselftest-vfio": ["driver.iommufd.memcpy_storm"],
        "kselftest-iommu": ["iommufd.simple_close"],
        "lab": ["lab_only.case"],
    }
    (d,) = got["7.2-n"].disagree
    assert (d.id, d.lab, d.other, d.suite, d.explained_by) == (
        "dma.iommufd.map",
        "pass",
        "fail",
        "kselftest-vfio",
        "",
    )


def test_skip_skip_agrees_but_the_table_does_not_call_it_a_pass(tmp_path):
    p = one_cell(
        tmp_path,
        rec("t.ran"),
        rec("t.skipped", "skip"),
        rec("t.half", "skip"),
        c_rec("t.ran"),
        c_rec("t.skipped", "skip"),
        c_rec("t.half"),
    )
    assert pairs(p) == {("pass", "pass"): 1, ("skip", "skip"): 1, ("skip", "pass"): 1}
    assert (p.shared, p.agree, len(p.disagree)) == (3, 2, 1)
    assert parity.line(p).startswith("3 shared ids: 2 agree, 1 differ (0 explained, 1 unexplained)")


def test_a_crash_and_a_failed_assertion_differ_though_both_are_known_failures(tmp_path):
    """One expectation for every suite makes both XFAIL; what they came to still differs."""
    p = one_cell(
        tmp_path,
        rec("mmio.t", "xfail", expectation=KNOWN, raw="error"),
        c_rec("mmio.t", "xfail", expectation=KNOWN, raw="fail"),
    )
    assert p.agree == 0 and pairs(p) == {("xfail(error)", "xfail(fail)"): 1}
    (d,) = p.unexplained
    assert (d.lab, d.other) == ("xfail(error)", "xfail(fail)")


def test_an_expectation_explains_the_difference_it_declares(tmp_path):
    """On the C suite's record, saying it fails: explains lab pass (or skip) / C fail."""
    p = one_cell(
        tmp_path,
        rec("mmio.a", "pass"),
        rec("mmio.b", "skip"),
        c_rec("mmio.a", "xfail", expectation=KNOWN, raw="fail"),
        c_rec("mmio.b", "xfail", expectation=KNOWN, raw="error"),
    )
    assert [d.explained_by for d in p.disagree] == ["iommufd cannot map MMIO"] * 2
    assert p.unexplained == []


def test_an_expectation_does_not_explain_the_opposite_direction(tmp_path):
    """On the C suite's record, saying it fails, while the lab failed and C passed."""
    p = one_cell(
        tmp_path,
        rec("mmio.t", "fail"),
        c_rec("mmio.t", "xpass", expectation=KNOWN, raw="pass"),
    )
    (d,) = p.unexplained
    assert (d.lab, d.other) == ("fail", "xpass(pass)")


def test_an_expectation_on_the_other_suite_does_not_explain(tmp_path):
    """Matched (and passed) on the lab's record: says nothing of C's unexpected failure."""
    lab_only = KNOWN | {"suite": "lab"}
    p = one_cell(
        tmp_path,
        rec("mmio.t", "xpass", expectation=lab_only, raw="pass"),
        c_rec("mmio.t", "fail"),
    )
    (d,) = p.unexplained
    assert (d.lab, d.other) == ("xpass(pass)", "fail")


def test_a_known_failure_on_both_sides_explains_no_other_failure(tmp_path):
    """Lab notrun (the guest died) beside a declared C failure: nothing declared that."""
    p = one_cell(
        tmp_path, rec("mmio.t", "notrun"), c_rec("mmio.t", "xfail", expectation=KNOWN, raw="fail")
    )
    assert len(p.unexplained) == 1


def test_a_record_without_its_raw_outcome_is_refused_by_name(tmp_path):
    """A tests.json from before records kept `raw`: an XFAIL could be a fail or a crash."""
    known = [rec("mmio.t", "xfail", expectation=KNOWN, raw="fail"),
             c_rec("mmio.t", "xfail", expectation=KNOWN, raw="error")]  # fmt: skip
    run = write_run(tmp_path, {"c": known})
    tests = run / "c" / "tests.json"
    tests.write_text(
        json.dumps(
            [{k: v for k, v in r.items() if k != "raw"} for r in json.loads(tests.read_text())]
        )
    )
    with pytest.raises(UsageError, match=r"cell c: mmio\.t matched an expectation, but .* no raw"):
        parity.run_parity(load_run(run))
    done = lab("parity", str(run))
    assert done.returncode == 2 and "no raw outcome" in done.stderr, done.stderr


def test_cli_parity_exit_code_text_and_parity_json(tmp_path):
    run_dir = write_run(tmp_path, cells())
    done = lab("parity", str(run_dir))
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "7.2-n: 1 shared ids: 0 agree, 1 differ (0 explained, 1 unexplained)" in out
    assert "dma.iommufd.map: lab pass, kselftest-vfio fail (UNEXPLAINED)" in out
    assert "kselftest-vfio  xfail(fail)  xfail(fail)    1  agree" in out
    written = json.loads((run_dir / parity.PARITY).read_text())
    y = written["cells"]["7.2-y"]
    assert written["unexplained"] == 1 and (y["agree"], y["differ"], y["explained"]) == (2, 0, 0)
    assert {"suite": "kselftest-vfio", "lab": "xfail(fail)", "other": "xfail(fail)",
            "agree": True, "count": 1} in y["pairs"]  # fmt: skip
    html = (run_dir / "report.html").read_text()
    assert "<h2 id=parity>Parity</h2>" in html and "XFAIL(FAIL)" in html


def test_cli_parity_refuses_what_is_not_a_run_directory(tmp_path):
    done = lab("parity", str(tmp_path))
    assert done.returncode == 2
    assert f"{tmp_path} is not a vfio-lab run directory: it has no summary.json" in done.stderr
    lab_only = write_run(tmp_path, {"c": [rec("t.a")]})
    done = lab("parity", str(lab_only))
    assert done.returncode == 0
    assert "no cell ran a C suite beside the lab's payload" in done.stdout


# -- payload.parity: gate -----------------------------------------------------------------
LAB_TAP = "TAP version 13\n1..1\nnot ok 1 mmio.t\n"
C_TAP = "TAP version 13\n1..1\nnot ok 1 kselftest-vfio:mmio.t # ERROR the program crashed\n"


def run_cell(tmp_path: Path, mode: str) -> tuple[int, dict[str, object]]:
    """One cell through CellRun's real triage and RunResults: the lab's test fails its
    assertion, the C suite's crashes, one expectation makes both XFAIL."""
    path = tmp_path / f"{mode}.yaml"
    path.write_text(
        "kernels: [debian-stock]\n"
        f"payload:\n  suites: [lab, kselftest-vfio]\n  parity: {mode}\n"
        "expectations:\n  - {test: mmio.t, reason: known}\n"
    )
    (cell,) = scenario.expand(scenario.load(path))
    cell_dir = tmp_path / mode / cell.name
    cell_dir.mkdir(parents=True)
    run = CellRun(cell, cell_dir, None, [], SILENT)  # type: ignore[arg-type]  # triage only
    result = CellResult(cell.name, "debian-stock", "error", empty_counts(), str(cell_dir), 0.0)
    taps = {"lab": parse_text(LAB_TAP), "kselftest-vfio": parse_text(C_TAP)}
    records = run.triage(PayloadOutcome(taps, [], None), result)
    assert [(r.outcome, r.raw) for r in records] == [("xfail", "fail"), ("xfail", "error")]
    results = RunResults(
        cell_dir.parent, "gate", "20261121-000000-abcd", "tcg", "test", shards.plan([cell])
    )
    results.set_records(cell.name, records)
    results.add(result)
    code = results.finish()
    return code, json.loads((cell_dir.parent / "summary.json").read_text())["cells"][0]


def test_parity_as_a_gate_fails_the_run_on_an_unexplained_disagreement(tmp_path):
    code, cell = run_cell(tmp_path, "gate")
    assert code == 1 and cell["verdict"] == "fail"
    assert cell["parity"] == "gate: 1 shared ids: 0 agree, 1 differ (0 explained, 1 unexplained)"
    assert cell["unexpected"] == [
        "parity gate: mmio.t: lab xfail(fail), kselftest-vfio xfail(error)"
    ]


def test_parity_as_a_report_leaves_the_exit_code_alone(tmp_path):
    code, cell = run_cell(tmp_path, "report")
    assert code == 0 and cell["verdict"] == "pass" and cell["unexpected"] == []
    assert cell["parity"] == "report: 1 shared ids: 0 agree, 1 differ (0 explained, 1 unexplained)"


def test_a_gate_with_nothing_to_compare_fails(tmp_path):
    p = parity.cell_parity("c", [rec("t.a"), c_rec("t.b")])
    line, failures = parity.judge(p, parity.GATE)
    assert line is not None and line.startswith("gate: 0 shared ids")
    assert failures == [
        "parity gate: no test id that both the lab's payload and a C suite produced"
    ]
    assert parity.judge(p, "report")[1] == []


def test_the_built_in_parity_scenario_gates():
    s = scenario.load(scenario.locate("parity"))
    assert s.payload.parity == "gate"
    assert scenario.load(scenario.DEFAULT_SCENARIO).payload.parity == "report"
