"""The guest's TAP plugin, run on the host's Python against a sample test file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict

from lab.results.parity import cell_parity
from lab.results.records import TestRecord
from lab.results.tap import TapResult, parse_text
from lab.run import triage
from lab.run.payload import pytest_argv
from tests.conftest import REPO


def run_sample(tmp_path, *extra, pass_fds=()):
    work = tmp_path / "tests"
    shutil.copytree(REPO / "tests" / "fixtures" / "tap_sample", work)
    env = dict(os.environ, PYTHONPATH=str(REPO / "guest_tests"))
    done = subprocess.run(
        [*pytest_argv(sys.executable, str(tmp_path / "out.tap")), "-q", *extra],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        pass_fds=pass_fds,
    )
    return done, (tmp_path / "out.tap").read_text(), work


def test_tap_lines_names_and_directives(tmp_path):
    done, text, _ = run_sample(tmp_path)
    assert done.returncode == 1, done.stdout  # a failure was reported to pytest too
    lines = text.splitlines()
    assert lines[0] == "TAP version 13" and lines[6] == "1..5"
    tap = parse_text(text)
    assert tap.notes == [f"collected: {r.name}" for r in tap.results]
    by_name = {r.name: r for r in tap.results}
    assert by_name["sample_test.vfio_type1_iommu.map"].outcome == "pass"
    assert by_name["sample_test.vfio_type1_iommu.map"].diagnostic("iova") == "0x100000"
    assert by_name["sample_test.iommufd.map"].outcome == "skip"
    assert by_name["sample_test.iommufd.map"].reason == "CONFIG_IOMMUFD not set (no /dev/iommu)"
    assert by_name["sample_test.deliberate_failure"].outcome == "fail"
    assert any(
        "deliberate failure mid-way" in d
        for d in by_name["sample_test.deliberate_failure"].diagnostics
    )
    assert by_name["sample_test.known_bug"].outcome == "xfail"
    assert by_name["sample_test.setup_error"].outcome == "error"
    assert all(r.duration_s is not None and r.yaml == [] for r in tap.results)
    assert tap.problems() == []


def test_markers_go_to_the_tests_own_kernel_log(tmp_path, kmsg):
    run_sample(tmp_path)
    lines = kmsg.read_text().splitlines()
    assert "vfio-lab: test-start sample_test.vfio_type1_iommu.map" in lines
    assert "vfio-lab: test-end sample_test.vfio_type1_iommu.map pass" in lines


def test_a_failing_test_still_releases_its_resources(tmp_path):
    _, _, work = run_sample(tmp_path)
    assert (work / "released.txt").read_text() == "released\n"


def test_tap_is_also_streamed_to_a_file_descriptor(tmp_path):
    read_end, write_end = os.pipe()  # the sample's TAP fits in a pipe's buffer
    done, text, _ = run_sample(tmp_path, f"--tap-fd={write_end}", pass_fds=(write_end,))
    os.close(write_end)
    assert done.returncode == 1
    with os.fdopen(read_end) as stream:
        assert stream.read() == text


PARAMETRIZED = """
import pytest

@pytest.mark.parametrize("size", [4096, 8192])
@pytest.mark.parametrize("iommu_mode", ["iommufd"])
def test_map(iommu_mode, size):
    pass
"""


def results_of(tmp_path, module: str) -> list[TapResult]:
    """What the plugin reports of the tests of `module` (user_test.py)."""
    work = tmp_path / "tests"
    work.mkdir()
    (work / "user_test.py").write_text(module)
    env = dict(os.environ, PYTHONPATH=str(REPO / "guest_tests"))
    done = subprocess.run(
        [*pytest_argv(sys.executable, str(tmp_path / "out.tap")), "-q"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout
    return parse_text((tmp_path / "out.tap").read_text()).results


def names_of(tmp_path, module: str) -> list[str]:
    return [r.name for r in results_of(tmp_path, module)]


def test_every_parameter_is_part_of_the_name(tmp_path):
    # The lab's own parameter (the IOMMU mode) first, then the user's, as upstream names them.
    assert names_of(tmp_path, PARAMETRIZED) == [
        "user_test.iommufd_4096.map",
        "user_test.iommufd_8192.map",
    ]


def test_a_module_names_the_upstream_fixture_it_mirrors(tmp_path):
    module = 'TAP_FIXTURE = "vfio_cdev"\n\ndef test_bind():\n    pass\n'
    assert names_of(tmp_path, module) == ["vfio_cdev.bind"]


TIMED = """
import time

import pytest

@pytest.fixture
def slow_fixture():
    time.sleep(0.3)
    yield
    time.sleep(0.3)

def test_slow(slow_fixture):
    time.sleep(0.3)

def test_fast():
    pass
"""


def test_a_tests_duration_is_its_setup_call_and_teardown(tmp_path):
    slow, fast = results_of(tmp_path, TIMED)
    assert slow.duration_s is not None and slow.duration_s >= 0.9
    assert fast.duration_s is not None and fast.duration_s < 0.3


MARKED = """
import pytest

@pytest.fixture
def broken():
    raise RuntimeError("setup exploded")

@pytest.mark.xfail(reason="known bug")
def test_fails():
    raise AssertionError("still broken")

@pytest.mark.xfail(reason="known bug")
def test_errs(broken):
    pass

@pytest.mark.xfail(reason="fixed meanwhile")
def test_passes():
    pass

def test_plain():
    pass
"""


def test_an_xfail_markers_test_keeps_in_tests_json_what_it_came_to_itself(tmp_path):
    results = results_of(tmp_path, MARKED)
    assert [(r.name, r.outcome, r.raw) for r in results] == [
        ("user_test.fails", "xfail", "fail"),
        ("user_test.errs", "xfail", "error"),
        ("user_test.passes", "xpass", "pass"),
        ("user_test.plain", "pass", None),
    ]
    assert all(r.yaml == [] for r in results), "raw_outcome is no diagnostic"
    tap = parse_text((tmp_path / "out.tap").read_text())
    records = triage.records(tap, [], [], None)
    # As a gate reads them back from tests.json.
    stored = [TestRecord.from_dict(json.loads(json.dumps(asdict(r)))) for r in records]
    assert [(r.outcome, r.raw_outcome) for r in stored] == [
        ("xfail", "fail"),
        ("xfail", "error"),
        ("xpass", "pass"),
        ("pass", "pass"),
    ]
    # Parity judges raw outcomes: the C suite's test failed too, so the two agree.
    c_fail = TestRecord("kselftest-vfio:user_test.fails", "fail", suite="kselftest-vfio")
    parity = cell_parity("c", [*stored, c_fail])
    assert parity is not None and parity.agree == 1 and parity.disagree == []
