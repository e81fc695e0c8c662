"""Per-test triage: kernel lines attributed by the payload's markers, fail vs error."""

from __future__ import annotations

import re

import pytest

from lab.model.scenario import Expectation
from lab.model.variants import IOMMU_MODELS
from lab.results.records import TestRecord
from lab.results.tap import parse_text
from lab.run import triage
from lab.vm.console import Stop

TAP = """\
TAP version 13
# collected: m.a
# collected: m.b
# collected: m.c
# collected: m.d
1..4
ok 1 m.a
# call: E   assert 1 == 0
not ok 2 m.b
"""

CONSOLE = """\
[    1.0] Linux version 7.2
[    2.0] vfio-lab: test-start m.a
[    2.1] DMAR: [DMA Write NO_PASID] Request device [00:03.0] fault addr 0x102000
[    2.2] vfio-lab: test-end m.a pass
[    2.3] vfio-lab: test-start m.b
[    2.4] WARNING: CPU: 0 PID: 9 at drivers/vfio/vfio_iommu_type1.c:1 vfio_x+0x1/0x2
[    2.5] vfio-lab: test-end m.b fail
[    2.6] vfio-lab: test-start m.c
[    2.7] sysrq: Trigger a crash
[    2.8] Kernel panic - not syncing: sysrq triggered crash
"""


def by_name(recs):
    return {r.name: r for r in recs}


def test_a_panic_makes_the_running_test_an_error_and_the_rest_not_run():
    lines = CONSOLE.splitlines()
    stop = Stop("panic", "Kernel panic - not syncing: sysrq triggered crash", "m.c")
    recs = by_name(triage.records(parse_text(TAP), None, lines, stop))
    assert [r.outcome for r in recs.values()] == ["pass", "error", "error", "notrun"]
    assert recs["m.c"].reason == "panic: Kernel panic - not syncing: sysrq triggered crash"
    assert recs["m.c"].kernel == ["panic: Kernel panic - not syncing: sysrq triggered crash"]
    assert any("console: [    2.8] Kernel panic" in d for d in recs["m.c"].diagnostics)
    assert recs["m.d"].reason == "not run: the guest stopped during m.c"


def test_a_kernel_warning_turns_a_failure_into_an_error_and_keeps_what_the_test_said():
    recs = by_name(triage.records(parse_text(TAP), CONSOLE.splitlines(), [], None))
    b = recs["m.b"]
    assert b.outcome == "error"
    assert b.reason.startswith("kernel warning during the test: WARNING: CPU: 0 PID: 9")
    assert b.reason.endswith("(the test itself: fail)")
    assert b.diagnostics == ["call: E   assert 1 == 0"]


def test_an_iommu_fault_is_attributed_but_not_an_error():
    recs = by_name(triage.records(parse_text(TAP), CONSOLE.splitlines(), [], None))
    a = recs["m.a"]
    assert a.outcome == "pass"
    assert a.kernel == [
        "iommu fault: DMAR: [DMA Write NO_PASID] Request device [00:03.0] fault addr 0x102000"
    ]
    assert a.dmesg == [
        "[    2.1] DMAR: [DMA Write NO_PASID] Request device [00:03.0] fault addr 0x102000"
    ]


def test_lines_outside_tests_belong_to_none():
    slices = triage.by_test(CONSOLE.splitlines())
    assert slices[""] == ["[    1.0] Linux version 7.2"]
    assert triage.last_running(CONSOLE.splitlines()) == "m.c"


def test_serious_alarms_outside_tests_are_the_cells_problems():
    boot = [
        "[ 0.5] WARNING: CPU: 0 PID: 1 at drivers/iommu/intel/dmar.c:1 x+0x1/0x2",
        "[ 0.6] DMAR: [DMA Read NO_PASID] Request device [00:03.0] fault addr 0x0",
        *CONSOLE.splitlines(),
    ]
    assert triage.outside_alarms(boot) == [
        "kernel warning outside any test: WARNING: CPU: 0 PID: 1 at drivers/iommu/intel/dmar.c:1 x+0x1/0x2"
    ]


def test_without_a_collected_header_missing_tests_are_numbered():
    recs = triage.records(parse_text("1..3\nok 1 a\n"), [], [], None)
    assert [(r.name, r.outcome) for r in recs] == [
        ("a", "pass"),
        ("(test 2)", "notrun"),
        ("(test 3)", "notrun"),
    ]


def test_slices_are_capped_head_and_tail():
    lines = [f"line {i}" for i in range(100)]
    capped = triage.cap(lines)
    assert capped[:2] == ["line 0", "line 1"] and capped[-1] == "line 99"
    assert "[... 40 lines ...]" in capped


def test_expectations_make_xfail_and_xpass_only_where_they_match():
    recs = [
        TestRecord("m.bug", "fail", "boom"),
        TestRecord("m.fixed", "pass"),
        TestRecord("m.other", "fail"),
    ]
    known = [
        Expectation(test="m.bug", reason="tracked", link="https://lore/x"),
        Expectation(test="m.fixed", reason="was broken", cells="*=y"),
    ]
    triage.expect(recs, "7.2-x=y", known)
    assert [r.outcome for r in recs] == ["xfail", "xpass", "fail"]
    assert [r.raw for r in recs] == ["fail", "pass", None], "what they came to is kept"
    assert recs[0].reason == "known failure: tracked (was fail: boom)"
    assert recs[0].expectation["link"] == "https://lore/x"
    assert recs[1].reason == "expected to fail (was broken), but passed"
    other_cell = [TestRecord("m.fixed", "pass")]
    triage.expect(other_cell, "7.2-x=n", known)
    assert other_cell[0].outcome == "pass"


def splatted(name: str) -> TestRecord:
    """A test that failed its assertion and hit a kernel WARN meanwhile (as triage makes it)."""
    rec = TestRecord(name, "fail", "assert 1 == 2")
    triage._attribute([rec], {name: ["WARNING: CPU: 0 PID: 1 at drivers/iommu/x.c:1"]}, {})
    assert rec.outcome == "error"
    return rec


def test_a_known_failure_does_not_hide_a_kernel_splat():
    rec = splatted("m.known")
    triage.expect([rec], "c", [Expectation(test="m.known", reason="asserts wrongly")])
    assert rec.outcome == "error"
    assert "not covered by the known failure 'asserts wrongly'" in rec.reason
    assert rec.expectation is not None  # matched, shown, but not applied


def test_an_expectation_for_the_splat_itself_makes_it_xfail():
    rec = splatted("m.known")
    known = Expectation(test="m.known", reason="WARN in x.c, fixed upstream", kernel=True)
    triage.expect([rec], "c", [known])
    assert rec.outcome == "xfail" and rec.raw == "error"
    assert rec.reason.startswith("known failure: WARN in x.c, fixed upstream (was error: kernel")


def test_verdicts():
    def v(*outcomes, problems=()):
        return triage.verdict(
            [TestRecord(f"t{i}", o) for i, o in enumerate(outcomes)], list(problems)
        )

    assert v("pass", "skip", "xfail") == "pass"
    assert v("pass", "fail") == "fail"
    assert v("xpass") == "fail"
    assert v("pass", "notrun") == "error"
    assert v("error", "fail") == "error"
    assert v("pass", problems=["kernel mismatch"]) == "error"
    assert v() == "error"


def test_a_test_name_reported_twice_is_a_problem_of_the_cell():
    tap = parse_text("TAP version 13\n1..3\nok 1 m.a\nok 2 m.b\nnot ok 3 m.a\n")
    assert triage.duplicates(tap) == ["test name reported 2 times: m.a"]
    assert triage.duplicates(parse_text("TAP version 13\n1..1\nok 1 m.a\n")) == []


MARKED_TAP = """\
TAP version 13
1..2
not ok 1 m.a # TODO known bug
  ---
  duration_ms: 1.000
  raw_outcome: error
  ...
ok 2 m.b # TODO unexpectedly passed: fixed meanwhile
  ---
  duration_ms: 1.000
  raw_outcome: pass
  ...
"""


def test_an_xfail_markers_raw_outcome_survives_an_expectation_but_not_a_splat():
    known = Expectation(test="m.a", reason="declared too")
    recs = by_name(triage.records(parse_text(MARKED_TAP), [], [], None))
    triage.expect(list(recs.values()), "c", [known])
    assert (recs["m.a"].outcome, recs["m.a"].raw_outcome) == ("xfail", "error")
    assert triage.raw_outcome(recs["m.a"]) == "error", "a setup error, not a failed assertion"
    warn = "WARNING: CPU: 0 PID: 9 at drivers/vfio/vfio_iommu_type1.c:1 vfio_x+0x1/0x2"
    lines = ["vfio-lab: test-start m.b", warn, "vfio-lab: test-end m.b xpass"]
    splat = by_name(triage.records(parse_text(MARKED_TAP), lines, [], None))["m.b"]
    assert (splat.outcome, splat.raw_outcome) == ("error", "error")


# One DMA fault line per IOMMU model, as its driver prints it (dmesg's timestamp and all).
FAULT_LINES = {
    "intel-iommu": "[   12.3] DMAR: [DMA Read NO_PASID] Request device [01:00.0] fault addr "
    "0x7f000 [fault reason 0x06] PTE Read access is not set",
    "virtio-iommu": "[   12.3] virtio_iommu virtio0: page fault from EP 8 at 0x7f000 [R]",
    "smmuv3": "[   12.3] arm-smmu-v3 9050000.smmuv3: event 0x10 received:",
}


def test_every_model_in_the_registry_has_a_fault_line_here():
    assert set(FAULT_LINES) == set(IOMMU_MODELS)
    assert all(re.compile(IOMMU_MODELS[m].fault_log).groups == 0 for m in IOMMU_MODELS)


@pytest.mark.parametrize("model", list(FAULT_LINES))
def test_each_models_dma_fault_is_an_iommu_fault_and_no_error(model):
    line = FAULT_LINES[model]
    assert re.search(IOMMU_MODELS[model].fault_log, line)
    assert triage.alarms([line]) == [("iommu fault", line.split("] ", 1)[1], False)]


def test_smmuv3s_decoded_event_line_is_a_fault_but_its_raw_words_are_not():
    decoded = (
        "arm-smmu-v3 9050000.smmuv3: event: F_TRANSLATION client: 0000:01:00.0 sid: 0x8 "
        "ssid: 0x0 iova: 0x7f000 ipa: 0x0"
    )
    assert triage.alarms([f"[ 12.4] {decoded}"]) == [("iommu fault", decoded, False)]
    assert triage.alarms(["[ 12.4] arm-smmu-v3 9050000.smmuv3: \t0x0000000800000010"]) == []
