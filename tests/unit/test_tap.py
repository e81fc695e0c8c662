from __future__ import annotations

import json

import pytest

from lab.results.tap import TapParser, parse_text
from lab.run import triage
from tests.conftest import REPO

SAMPLE = """\
TAP version 13
1..6
# container_provider: vfio
# iova: 0x100000
ok 1 vfio_dma_mapping_test.vfio_type1_iommu_anonymous.dma_map_unmap
ok 2 vfio_dma_mapping_test.iommufd_anonymous.dma_map_unmap # SKIP CONFIG_IOMMUFD not set (no /dev/iommu)
# call: AssertionError: boom
not ok 3 vfio_pci_driver_test.vfio_type1_iommu.memcpy_success
not ok 4 known.bug # TODO tracked upstream
ok 5 fixed.bug # TODO unexpectedly passed: tracked
not ok 6 broken.setup # ERROR in setup or teardown
"""


def test_outcomes_and_directives():
    tap = parse_text(SAMPLE)
    assert [r.outcome for r in tap.results] == ["pass", "skip", "fail", "xfail", "xpass", "error"]
    assert tap.results[1].reason == "CONFIG_IOMMUFD not set (no /dev/iommu)"
    assert tap.results[0].name == "vfio_dma_mapping_test.vfio_type1_iommu_anonymous.dma_map_unmap"
    assert tap.counts() == {
        "pass": 1,
        "fail": 1,
        "skip": 1,
        "xfail": 1,
        "xpass": 1,
        "error": 1,
        "notrun": 0,
    }
    assert tap.problems() == []


def test_diagnostics_belong_to_the_next_result():
    tap = parse_text(SAMPLE)
    assert tap.results[0].diagnostics == ["container_provider: vfio", "iova: 0x100000"]
    assert tap.results[0].diagnostic("iova") == "0x100000"
    assert tap.results[1].diagnostics == []
    assert tap.results[2].diagnostics == ["call: AssertionError: boom"]


def test_garbage_lines_are_skipped_and_counted():
    tap = TapParser()
    for line in [
        "[   12.3] random kernel noise",
        "ok 1 a",
        "\x00\xff junk",
        "",
        "okay this is not tap",
        "ok 2 b",
    ]:
        tap.feed(line)
    assert [r.name for r in tap.results] == ["a", "b"]
    assert tap.garbage == 3


def test_truncated_output_reports_missing_tests_as_not_run():
    tap = parse_text("TAP version 13\n1..5\nok 1 a\nok 2 b\n")
    assert tap.counts()["notrun"] == 3
    assert tap.problems() == ["3 of 5 planned tests did not report"]


def test_no_plan_is_a_problem():
    tap = parse_text("ok 1 a\n")
    assert "no TAP plan" in tap.problems()[0]


def test_bail_out():
    tap = parse_text("1..2\nok 1 a\nBail out! device vanished\n")
    assert tap.bailed_out == "device vanished"
    assert any("bailed out" in p for p in tap.problems())


def test_numberless_and_dash_results():
    tap = parse_text("1..2\nok - first\nnot ok second\n")
    assert [(r.number, r.name, r.outcome) for r in tap.results] == [
        (1, "first", "pass"),
        (2, "second", "fail"),
    ]


def test_lowercase_skip_directive():
    assert parse_text("1..1\nok 1 x # skip no hugepages\n").results[0].outcome == "skip"


def test_subtests_nest_by_indentation_and_belong_to_the_next_result():
    tap = parse_text(
        "KTAP version 1\n1..1\n    KTAP version 1\n    # Subtest: grp\n    1..2\n"
        "    ok 1 a\n    not ok 2 b\nnot ok 1 grp\n"
    )
    assert tap.problems() == []
    (grp,) = tap.results
    assert [(s.name, s.outcome) for s in grp.subtests] == [("a", "pass"), ("b", "fail")]
    assert [name for name, _ in tap.flat()] == ["grp", "grp/a", "grp/b"]


def test_stray_lines_do_not_close_subtests():
    tap = parse_text("1..1\n    1..2\n    ok 1 a\nkernel noise\n# a note\n    ok 2 b\nok 1 g\n")
    assert [s.name for s in tap.results[0].subtests] == ["a", "b"]
    assert tap.results[0].diagnostics == ["a note"]


def test_output_cut_inside_subtests_or_yaml_is_a_problem():
    assert "inside the subtests of 'two'" in " ".join(
        parse_text("1..2\nok 1 one\n    # Subtest: two\n    1..2\n    ok 1 x\n").problems()
    )
    assert "inside a YAML block" in " ".join(
        parse_text("1..1\nnot ok 1 a\n  ---\n  message: x\n").problems()
    )


def test_yaml_block_belongs_to_its_result():
    tap = parse_text("1..2\nnot ok 1 a\n  ---\n  got: 0\n  ...\nok 2 b\n")
    assert tap.results[0].yaml == ["got: 0"] and tap.problems() == []


def test_notes_before_the_plan_are_the_header():
    tap = parse_text("TAP version 13\n# collected: a\n# collected: b\n1..2\n# d\nok 1 a\n")
    assert tap.notes == ["collected: a", "collected: b"]
    assert tap.results[0].diagnostics == ["d"]


def test_a_plan_that_comes_last_keeps_the_announced_tests_in_the_header():
    # The C suites' runner: it announces, reports, then plans; a dying guest never plans.
    text = "TAP version 13\n# collected: a\n# collected: b\n# d\nok 1 a\n"
    cut = parse_text(text)
    assert cut.collected == ["a", "b"] and cut.results[0].diagnostics == ["d"]
    assert cut.counts()["notrun"] == 1
    done = parse_text(text + "# collected: c\n1..1\n")
    assert done.collected == ["a", "b", "c"] and done.counts()["notrun"] == 2


def test_an_announcement_after_the_first_result_is_a_diagnostic():
    tap = parse_text("TAP version 13\nok 1 a\n# collected: x\nok 2 b\n1..2\n")
    assert tap.collected == [] and tap.results[1].diagnostics == ["collected: x"]


GOLDEN_TAP = sorted((REPO / "tests" / "golden" / "tap").glob("*.tap"))


@pytest.mark.parametrize("sample", GOLDEN_TAP, ids=[p.stem for p in GOLDEN_TAP])
def test_golden_parses(sample, golden):
    parsed = parse_text(sample.read_text(errors="replace")).to_dict()
    golden(f"tap/{sample.stem}.json", json.dumps(parsed, indent=2) + "\n")


def test_golden_samples_exist():
    assert {p.stem for p in GOLDEN_TAP} >= {"payload-6.12", "kunit-ktap", "tap14-yaml"}


TIMED = """\
TAP version 13
1..4
ok 1 fast
  ---
  duration_ms: 12.5
  ...
not ok 2 slow # TODO known
  ---
  message: "boom"
  duration_ms: 61000
  duration_ms: 3
  ...
ok 3 untimed
  ---
  data:
    duration_ms: 99
  ...
ok 4 odd
  ---
  duration_ms: soon
  ...
"""


def test_durations_come_from_the_yaml_block_and_leave_it():
    tap = parse_text(TIMED)
    assert [r.duration_s for r in tap.results] == [0.0125, 61.0, None, None]
    assert tap.results[0].yaml == []  # else every run's records would differ
    assert tap.results[1].yaml == ['message: "boom"', "duration_ms: 3"]  # the first counts
    assert tap.results[2].yaml == ["data:", "  duration_ms: 99"]  # nested: someone else's
    assert tap.results[3].yaml == ["duration_ms: soon"]
    assert tap.results[0].to_dict()["duration_s"] == 0.0125
    assert "duration_s" not in tap.results[2].to_dict()
    assert tap.problems() == []


def test_durations_reach_the_records_and_stay_out_of_the_diagnostics():
    recs = {r.name: r for r in triage.records(parse_text(TIMED), [], [], None)}
    assert recs["fast"].duration_s == 0.0125 and recs["fast"].diagnostics == []
    assert recs["untimed"].duration_s is None
    assert recs["slow"].duration_s == 61.0
    assert recs["slow"].diagnostics == ['message: "boom"', "duration_ms: 3"]
