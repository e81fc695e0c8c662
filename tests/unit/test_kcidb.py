"""KCIDB export, validated by KernelCI's own kcidb-io schema."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import kcidb_io
import pytest

from lab.core.cache import file_sha256
from lab.core.errors import UsageError
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


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def local_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, identity: str, patches=True):
    """A run of a patched local: tree under a (fake) home directory, whose paths are in
    everything a run can carry them in: the kernel's label, an infrastructure error, a
    test's reason and diagnostics, the patches' provenance."""
    home = tmp_path / "home" / "alice"
    checkout = home / "src" / "linux-vfio"
    checkout.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    files = []
    for name, text in (("0001-fix.patch", "--- a/x\n+++ b/x\n"), ("0002-more.patch", "more\n")):
        files.append(home / "patches" / name)
        files[-1].parent.mkdir(exist_ok=True)
        files[-1].write_text(text)
    cells = {
        "local-linux-vfio+0001-fix": [
            rec("t.one", "fail", f"log: {checkout}/tools/testing/x.c:3", reason=f"see {home}/x")
        ],
        "local-linux-vfio+0001-fix.retry": [rec("t.one")],
    }
    infra = {"local-linux-vfio+0001-fix.retry": f"build failed: {checkout}/.build/log"}
    run = write_run(tmp_path, cells, infra, kernel_identity=identity, kernel=f"local:{checkout}")
    record = {"kernel": {"patches": [{"file": str(f), "sha256": file_sha256(f)} for f in files]}}
    for cell in cells if patches else []:
        (run / cell / "provenance.json").write_text(json.dumps(record))
    return run, home, checkout, files


def test_a_patched_local_tree_keeps_its_commit_and_hashes_its_patches_as_kcidb_says(
    tmp_path, monkeypatch
):
    identity = f"git:{COMMIT}+patches:fedcba9876543210"
    run, home, checkout, files = local_run(tmp_path, monkeypatch, identity)
    data = kcidb.export(load_run(run))
    kcidb_io.schema.LATEST.validate(data)
    (checkout_record,) = data["checkouts"]
    assert checkout_record["git_commit_hash"] == COMMIT
    # The schema's own recipe: sha256sum *.patch | cut -c-64 | sha256sum | cut -c-64
    listed = subprocess.run(["sha256sum", *map(str, files)], capture_output=True, text=True)
    hashes = "".join(line[:64] + "\n" for line in listed.stdout.splitlines())
    expected = subprocess.run(["sha256sum"], input=hashes, capture_output=True, text=True)
    assert checkout_record["patchset_hash"] == expected.stdout[:64]
    assert "tree_name" not in checkout_record, "a local checkout has no widely-known name"
    text = json.dumps(data)
    assert str(home) not in text and str(checkout) not in text and "alice" not in text
    build = next(b for b in data["builds"] if b.get("log_excerpt"))
    assert build["log_excerpt"] == "build failed: <local tree>/.build/log"


def test_uncommitted_changes_leave_the_patchset_unknown(tmp_path, monkeypatch):
    run, *_ = local_run(tmp_path, monkeypatch, f"git:{COMMIT}+0123456789abcdef", patches=False)
    (checkout_record,) = kcidb.export(load_run(run))["checkouts"]
    assert checkout_record["git_commit_hash"] == COMMIT
    assert "patchset_hash" not in checkout_record  # not "": that would say no changes
    assert checkout_record["misc"]["uncommitted_changes"] is True


def test_a_patched_kernel_without_its_patches_record_is_refused(tmp_path, monkeypatch):
    identity = f"git:{COMMIT}+patches:fedcba9876543210"
    run, *_ = local_run(tmp_path, monkeypatch, identity, patches=False)
    with pytest.raises(UsageError, match=r"provenance.json: unreadable .* cannot be hashed"):
        kcidb.export(load_run(run))


def test_an_unpatched_debian_kernel_has_an_empty_patchset_and_a_tree_name(tmp_path):
    (checkout_record,) = exported(tmp_path)["checkouts"]
    assert checkout_record["patchset_hash"] == "" and checkout_record["tree_name"] == "debian"
