"""`vfio-lab parity`: the lab's payload against the kernel's C suites, on run directories
written by the real RunResults."""

from __future__ import annotations

import json

from lab.results import parity
from lab.results.rundir import load_run
from tests.conftest import lab
from tests.unit.run_fixtures import rec, write_run

KNOWN = {"test": "mmio.*", "reason": "iommufd cannot map MMIO", "cells": "*", "link": ""}


def c_rec(test_id: str, outcome: str = "pass", **kw: object):
    return rec(f"kselftest-vfio:{test_id}", outcome, suite="kselftest-vfio", **kw)


def cells():
    return {
        "7.2-y": [
            rec("dma.iommufd.map"),
            rec("mmio.type1.map_full_bar", "xfail", expectation=KNOWN),
            rec("lab_only.case"),
            c_rec("dma.iommufd.map"),
            c_rec("mmio.type1.map_full_bar", "xfail", expectation=KNOWN),
            c_rec("driver.iommufd.memcpy_storm"),
            rec("iommufd.simple_close", suite="kselftest-iommu"),
        ],
        "7.2-n": [rec("dma.iommufd.map"), c_rec("dma.iommufd.map", "fail")],
        "lab-only-cell": [rec("dma.iommufd.map")],
    }


def test_shared_ids_agree_disagree_and_only_one_suite(tmp_path):
    got = {p.cell: p for p in parity.run_parity(load_run(write_run(tmp_path, cells())))}
    assert set(got) == {"7.2-y", "7.2-n"}  # the cell that ran no C suite has no parity
    y = got["7.2-y"]
    assert (y.shared, y.agree, y.disagree) == (2, 2, [])
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


def test_a_disagreement_an_expectation_declares_is_explained(tmp_path):
    run = {
        "c": [
            rec("mmio.type1.map_full_bar", "pass"),
            c_rec("mmio.type1.map_full_bar", "xfail", expectation=KNOWN),
        ]
    }
    (p,) = parity.run_parity(load_run(write_run(tmp_path, run)))
    assert p.disagree[0].explained_by == "iommufd cannot map MMIO" and p.unexplained == []


def test_cli_parity_exit_code_text_and_parity_json(tmp_path):
    run_dir = write_run(tmp_path, cells())
    done = lab("parity", str(run_dir))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "7.2-n: 1 shared, 0 agree, 1 disagree (1 unexplained)" in done.stdout
    assert "dma.iommufd.map: lab pass, kselftest-vfio fail (UNEXPLAINED)" in done.stdout
    written = json.loads((run_dir / parity.PARITY).read_text())
    assert written["unexplained"] == 1 and written["cells"]["7.2-y"]["agree"] == 2
    assert "<h2 id=parity>Parity</h2>" in (run_dir / "report.html").read_text()


def test_cli_parity_refuses_what_is_not_a_run_directory(tmp_path):
    done = lab("parity", str(tmp_path))
    assert done.returncode == 2
    assert f"{tmp_path} is not a vfio-lab run directory: it has no summary.json" in done.stderr
    lab_only = write_run(tmp_path, {"c": [rec("t.a")]})
    done = lab("parity", str(lab_only))
    assert done.returncode == 0
    assert "no cell ran a C suite beside the lab's payload" in done.stdout
