"""KCIDB export, validated by KernelCI's own kcidb-io schema."""

from __future__ import annotations

import json
from pathlib import Path

import kcidb_io
import pytest

from lab.results import kcidb
from lab.results.rundir import load_run, start_time
from tests.conftest import lab
from tests.unit.run_fixtures import rec, sample_cells, write_run


def exported(tmp_path: Path) -> dict:
    return kcidb.export(load_run(write_run(tmp_path, sample_cells())))


def test_the_export_validates_against_the_latest_kcidb_schema(tmp_path: Path) -> None:
    data = exported(tmp_path)
    kcidb_io.schema.LATEST.validate(data)
    assert data["version"] == {"major": kcidb_io.schema.LATEST.major,
                               "minor": kcidb_io.schema.LATEST.minor}  # fmt: skip


def test_one_checkout_per_kernel_one_build_per_cell_one_test_per_record(tmp_path: Path) -> None:
    data = exported(tmp_path)
    cells = sample_cells()
    assert len(data["checkouts"]) == 1, "both cells ran the same kernel source"
    assert [b["comment"] for b in data["builds"]] == list(cells)
    assert len(data["tests"]) == sum(len(r) for r in cells.values())
    ids = [t["id"] for t in data["tests"]]
    assert len(set(ids)) == len(ids)
    builds = {b["id"]: b["comment"] for b in data["builds"]}
    by_env = {(t["environment"]["comment"], t["misc"]["test"]): t for t in data["tests"]}
    assert all(builds[t["build_id"]] == t["environment"]["comment"] for t in data["tests"])
    crash = by_env[("7.2-iommufd_vfio_container=y", "crash_test.crash_the_kernel")]
    assert crash["status"] == "ERROR" and "Kernel panic" in crash["log_excerpt"]
    known = by_env[("7.2-iommufd_vfio_container=n", "crash_test.crash_the_kernel")]
    assert known["status"] == "FAIL" and known["misc"]["expected_failure"]["reason"] == "sysrq"
    missed = by_env[("7.2-iommufd_vfio_container=y", "after_test.never")]
    assert missed["status"] == "MISS"


def test_paths_are_kcidb_paths_for_every_suite() -> None:
    c_test = rec("kselftest-vfio:vfio_pci_driver_test.iommufd.memcpy_storm", suite="kselftest-vfio")
    assert kcidb.kcidb_path(c_test) == "kselftest-vfio.vfio_pci_driver_test.iommufd.memcpy_storm"
    odd = rec("vfio_cdev.attach_detatch_pt[edu=1:2]")
    assert kcidb.kcidb_path(odd) == "lab.vfio_cdev.attach_detatch_pt_edu_1_2"


def test_start_time_comes_from_the_run_id() -> None:
    assert start_time("20261122-075059-c834") == "2026-11-22T07:50:59+00:00"
    assert start_time("merged-x") is None


def test_export_cli_writes_the_file_and_refuses_a_bad_origin(tmp_path: Path) -> None:
    run = write_run(tmp_path, {"a": [rec("t.one")]})
    done = lab("export", "kcidb", str(run), "-o", str(tmp_path / "k.json"), "--origin", "my_ci")
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "k.json").read_text())
    kcidb_io.schema.LATEST.validate(data)
    assert data["tests"][0]["origin"] == "my_ci" and data["tests"][0]["id"].startswith("my_ci:")
    bad = lab("export", "kcidb", str(run), "--origin", "My-CI")
    assert bad.returncode == 2 and "KCIDB origins are [a-z0-9_]+" in bad.stderr


@pytest.mark.parametrize("outcome", sorted(kcidb.STATUS))
def test_every_outcome_has_a_kcidb_status(outcome: str) -> None:
    assert kcidb.STATUS[outcome] in {"FAIL", "ERROR", "MISS", "PASS", "DONE", "SKIP"}
