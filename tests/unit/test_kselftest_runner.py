"""The guest's runner of the kernel's C selftests, run on the host over real programs:
shell scripts that print what kselftest_harness.h prints, and a C stand-in for a
harness program (tests/fixtures/kselftest/fake_harness.c) compiled here with gcc to list
its tests, then crash, hang or exit as each test needs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lab.core.data import GUEST_TESTS
from lab.results.records import TestRecord
from lab.results.tap import parse_text
from lab.run import triage
from lab.vm.console import ConsoleWatch
from tests.conftest import REPO

PROGRAMS = REPO / "tests" / "fixtures" / "kselftest"
SUITE = "kselftest-vfio"
FAKE_TESTS = [
    "vfio_fake_harness_fixture.first",
    "vfio_fake_harness_fixture.second",
    "vfio_fake_harness_fixture.third",
    "fake_variants.iommufd.map",
    "fake_variants.vfio_type1_iommu_with_a_long_name.map",
]


def runner_argv(tap_fd: int, programs: list[Path]) -> list[str]:
    return [
        sys.executable,
        str(GUEST_TESTS / "lab_kselftest.py"),
        "--tap-fd",
        str(tap_fd),
        "--suite",
        SUITE,
        "--bdf",
        "0000:01:00.0",
        *map(str, programs),
    ]


def run_runner(tmp_path: Path, *programs: str | Path) -> tuple[str, str]:
    """The runner's TAP, and the markers it wrote (to the `kmsg` fixture's file)."""
    tap = tmp_path / "out.tap"
    paths = [p if isinstance(p, Path) else PROGRAMS / p for p in programs]
    with tap.open("w") as out:
        subprocess.run(runner_argv(out.fileno(), paths), check=True, pass_fds=(out.fileno(),))
    return tap.read_text(), Path(os.environ["VFIO_LAB_KMSG"]).read_text()


def fake(tmp_path: Path, name: str, **defines: object) -> Path:
    """The C stand-in, compiled with `-DKEY=VALUE` for each of `defines`."""
    exe = tmp_path / name
    subprocess.run(
        ["gcc", "-o", str(exe), str(PROGRAMS / "fake_harness.c")]
        + [f"-D{k}={v}" for k, v in defines.items()],
        check=True,
    )
    return exe


def records(tap: str, console: list[str] | None = None, stop=None) -> dict[str, TestRecord]:
    """What the host makes of the TAP: one record per test, as a cell's triage does."""
    recs = triage.records(parse_text(tap), [], console or [], stop, SUITE)
    return {r.name.removeprefix(f"{SUITE}:"): r for r in recs}


def outcomes(recs: dict[str, TestRecord]) -> dict[str, str]:
    return {name: r.outcome for name, r in recs.items()}


def test_results_keep_upstreams_ids_and_their_diagnostics(tmp_path):
    tap, _ = run_runner(tmp_path, "harness_like")
    parsed = parse_text(tap)
    assert parsed.problems() == []
    got = {r.name: r for r in parsed.results}
    assert [r.outcome for r in parsed.results] == ["pass", "pass", "skip", "fail"]
    assert (
        got[
            "kselftest-vfio:vfio_dma_mapping_test.vfio_type1_iommu_anonymous.dma_map_unmap"
        ].diagnostic("iova")
        == "0x100000"
    )
    assert got[
        "kselftest-vfio:vfio_dma_mapping_test.iommufd_anonymous_hugetlb_1gb.dma_map_unmap"
    ].reason == ("no 1G hugepages")
    failed = got["kselftest-vfio:vfio_dma_mapping_test.vfio_type1_iommu.map_full_bar"]
    assert any("Expected 0 (0) == rc (-14)" in d for d in failed.diagnostics)


def test_markers_frame_each_test_for_the_kernel_log(tmp_path):
    _, kmsg = run_runner(tmp_path, "harness_like")
    lines = kmsg.splitlines()
    assert lines[0] == "vfio-lab: program-start harness_like"
    assert (
        "vfio-lab: test-start kselftest-vfio:vfio_dma_mapping_test.vfio_type1_iommu.map_full_bar"
        in lines
        and "vfio-lab: test-end kselftest-vfio:vfio_dma_mapping_test.vfio_type1_iommu.map_full_bar fail"
        in lines
    )
    assert lines[-1] == "vfio-lab: program-end harness_like 1"


def test_a_program_that_skips_all_or_reports_nothing(tmp_path):
    tap, _ = run_runner(tmp_path, "skips_all", "no_driver", "harness_like")
    parsed = parse_text(tap)
    skipped, broken = parsed.results[:2]
    assert (skipped.name, skipped.outcome) == ("kselftest-vfio:skips_all", "skip")
    assert skipped.reason == "No SR-IOV capability on 0000:01:00.0"
    assert (broken.name, broken.outcome) == ("kselftest-vfio:no_driver", "error")
    assert "exited 4 without reporting a test" in broken.reason
    assert "stderr: No driver found for device 0000:01:00.0" in broken.diagnostics
    assert len(parsed.results) == 6 and parsed.plan == 6


def test_a_harness_program_that_keeps_its_word_is_clean(tmp_path):
    # Its -l table (a fixture name wider than its column, variants beside tests) names
    # exactly the tests it then reports: nothing is left over as notrun.
    tap, _ = run_runner(tmp_path, fake(tmp_path, "fake"))
    assert parse_text(tap).collected == [f"{SUITE}:{t}" for t in FAKE_TESTS]
    assert outcomes(records(tap)) == dict.fromkeys(FAKE_TESTS, "pass")


def test_a_program_that_dies_after_3_of_5_tests(tmp_path):
    tap, _ = run_runner(tmp_path, fake(tmp_path, "fake", REPORTED=3, END="ABORT"), "harness_like")
    recs = records(tap)
    assert outcomes(recs) == {
        **dict.fromkeys(FAKE_TESTS[:3], "pass"),
        "fake": "error",
        **dict.fromkeys(FAKE_TESTS[3:], "notrun"),  # by the ids its -l gave
        "vfio_dma_mapping_test.vfio_type1_iommu_anonymous.dma_map_unmap": "pass",
        "vfio_dma_mapping_test.iommufd_anonymous.dma_map_unmap": "pass",
        "vfio_dma_mapping_test.iommufd_anonymous_hugetlb_1gb.dma_map_unmap": "skip",
        "vfio_dma_mapping_test.vfio_type1_iommu.map_full_bar": "fail",
    }
    assert recs["fake"].reason == "killed by SIGABRT after reporting 3 of 5 tests"
    assert "stderr: the fake's last words" in recs["fake"].diagnostics
    assert triage.verdict(list(recs.values()), []) == "error"


def test_a_program_that_dies_during_a_test(tmp_path):
    program = fake(tmp_path, "fake", REPORTED=3, END="RUN_ABORT")
    tap, kmsg = run_runner(tmp_path, program)
    recs = records(tap)
    assert outcomes(recs) == {
        **dict.fromkeys(FAKE_TESTS[:3], "pass"),
        FAKE_TESTS[3]: "error",
        FAKE_TESTS[4]: "notrun",
    }
    assert recs[FAKE_TESTS[3]].reason == (
        "fake killed by SIGABRT after reporting 3 of 5 tests, during this test"
    )
    assert f"vfio-lab: test-end {SUITE}:{FAKE_TESTS[3]} error" in kmsg.splitlines()


def test_a_program_without_a_list_names_what_its_plan_promised(tmp_path):
    program = fake(tmp_path, "plain", REPORTED=3, END="ABORT", LISTS=0)
    tap, _ = run_runner(tmp_path, program)
    assert outcomes(records(tap)) == {
        **dict.fromkeys(FAKE_TESTS[:3], "pass"),
        "plain": "error",
        "plain.#4": "notrun",
        "plain.#5": "notrun",
    }


def test_a_non_zero_exit_after_every_test_passed_is_an_error(tmp_path):
    tap, _ = run_runner(tmp_path, fake(tmp_path, "fake", END="EXIT1"))
    recs = records(tap)
    assert outcomes(recs) == {**dict.fromkeys(FAKE_TESTS, "pass"), "fake": "error"}
    assert recs["fake"].reason == "exited 1 after reporting all 5 tests, none failed"


def test_a_listed_program_that_skips_all_skips_each_of_its_tests(tmp_path):
    tap, _ = run_runner(tmp_path, fake(tmp_path, "fake", END="SKIP_ALL"))
    recs = records(tap)
    assert outcomes(recs) == dict.fromkeys(FAKE_TESTS, "skip")
    assert recs[FAKE_TESTS[0]].reason == "no device for 0000:01:00.0"


def test_a_program_cannot_announce_tests_of_its_own(tmp_path):
    forger = tmp_path / "forger"
    forger.write_text(
        "#!/bin/sh\necho 'TAP version 13'\necho '1..1'\n"
        "echo '# collected: kselftest-vfio:phantom'\necho 'ok 1 real'\n"
    )
    forger.chmod(0o755)
    tap, _ = run_runner(tmp_path, forger)
    assert outcomes(records(tap)) == {"real": "pass"}


def test_a_hung_program_is_an_error_of_its_test_and_the_rest_are_notrun(tmp_path, kmsg):
    """The host's watch over the console (here: the kmsg file the markers go to) gives up
    on the running test after the per-test timeout; the guest is abandoned (here: the
    runner is killed) and triage names the timeout and what never ran."""
    program = fake(tmp_path, "fake", REPORTED=1, END="RUN_HANG")
    tap = tmp_path / "out.tap"
    watch = ConsoleWatch(kmsg, stall_s=60.0, test_s=1.0)
    with tap.open("w") as out:
        runner = subprocess.Popen(
            runner_argv(out.fileno(), [program]), pass_fds=(out.fileno(),), start_new_session=True
        )
    try:
        deadline = time.monotonic() + 30
        while watch.verdict() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
    assert watch.stop is not None and watch.stop.kind == "hang"
    recs = records(tap.read_text(), kmsg.read_text().splitlines(), watch.stop)
    assert outcomes(recs) == {
        FAKE_TESTS[0]: "pass",
        FAKE_TESTS[1]: "error",
        **dict.fromkeys(FAKE_TESTS[2:], "notrun"),
    }
    assert recs[FAKE_TESTS[1]].reason == (
        f"hang: {SUITE}:{FAKE_TESTS[1]} still running after the per-test timeout of 1 s"
    )


def test_a_c_tests_duration_runs_from_its_run_line_to_its_result(tmp_path):
    # The second before the RUN line is the program's, not the test's.
    script = tmp_path / "timed"
    script.write_text(
        "#!/bin/sh\necho 1..2\nsleep 1\n"
        'echo "#  RUN           f.slow ..."\nsleep 0.5\necho "ok 1 f.slow"\n'
        'echo "#  RUN           f.fast ..."\necho "ok 2 f.fast"\n'
    )
    script.chmod(0o755)
    tap, _ = run_runner(tmp_path, script)
    recs = records(tap)
    assert 0.5 <= (recs["f.slow"].duration_s or 0) < 1.0
    assert (recs["f.fast"].duration_s or 1) < 0.5


def test_every_record_the_runner_writes_has_a_duration(tmp_path):
    tap, _ = run_runner(tmp_path, "skips_all", "no_driver", "harness_like")
    recs = records(tap)
    assert len(recs) == 6 and all(r.duration_s is not None for r in recs.values())
    assert parse_text(tap).problems() == []
