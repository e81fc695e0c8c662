"""junit.xml and report.html from a run written by the real RunResults; golden files."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict

from lab.results import reports
from lab.results.records import TestRecord, slowest
from lab.results.rundir import load_run, matrix
from lab.run.triage import alarms
from tests.unit.run_fixtures import rec, sample_cells, write_run


def stable(text: str, run_dir) -> str:
    return text.replace(str(run_dir), "RUN_DIR")


def test_junit_golden(tmp_path, golden):
    run_dir = write_run(tmp_path, sample_cells(), infra={})
    golden("report-junit.xml", stable((run_dir / reports.JUNIT).read_text(), run_dir))


def test_junit_has_a_suite_per_cell_with_counts_and_kernel_lines(tmp_path):
    run_dir = write_run(tmp_path, sample_cells())
    root = ET.parse(run_dir / reports.JUNIT).getroot()
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert list(suites) == ["7.2-iommufd_vfio_container=y", "7.2-iommufd_vfio_container=n"]
    y = suites["7.2-iommufd_vfio_container=y"]
    assert (y.get("tests"), y.get("failures"), y.get("errors"), y.get("skipped")) == (
        "5",
        "0",
        "2",
        "0",
    )
    crash = next(c for c in y.iter("testcase") if c.get("name") == "crash_the_kernel")
    error = crash.find("error")
    assert error is not None and "Kernel panic" in error.get("message", "")
    assert "kernel panic: Kernel panic - not syncing" in (error.text or "")
    assert "sysrq: Trigger a crash" in (crash.findtext("system-err") or "")
    n = suites["7.2-iommufd_vfio_container=n"]
    assert (n.get("failures"), n.get("skipped")) == ("1", "1")


def test_junit_infra_error_is_a_cell_level_error(tmp_path):
    run_dir = write_run(tmp_path, {"a": [], "b": [rec("t.x")]}, infra={"a": "SSH failed\nmore"})
    root = ET.parse(run_dir / reports.JUNIT).getroot()
    a = next(s for s in root.iter("testsuite") if s.get("name") == "a")
    assert a.get("errors") == "1"
    assert a.find("testcase/error").get("message") == "SSH failed"


def test_html_golden(tmp_path, golden):
    run_dir = write_run(tmp_path, sample_cells())
    golden("report.html", stable((run_dir / reports.HTML).read_text(), run_dir))


def test_html_is_self_contained_and_highlights_differing_rows(tmp_path):
    run_dir = write_run(tmp_path, sample_cells())
    html = (run_dir / reports.HTML).read_text()
    assert not re.search(
        r"""(src|href)=['"]?(https?:)?//""", html.replace("https://lore.kernel.org/x", "")
    )
    assert "<link" not in html and "@import" not in html
    rows = re.findall(r"<tr class='([^']*)' data-test='([^']*)'>", html)
    by_test = {test: classes.split() for classes, test in rows}
    hugetlb = "vfio_dma_mapping_test.vfio_type1_iommu_anonymous_hugetlb_1gb.dma_map_unmap"
    assert by_test[hugetlb] == ["differs"]  # same result, iopte_size differs
    assert "iopte_size: 4K" in html and "iopte_size: 1G" in html
    assert by_test["vfio_pci_device_test.reset"] == ["differs", "unexpected"]
    assert by_test["after_test.never"] == ["differs", "unexpected"]  # absent in one cell
    assert "&lt;b&gt;&amp;" in html  # console text is escaped
    assert "https://lore.kernel.org/x" in html


def test_cell_wide_diagnostics_do_not_make_rows_differ(tmp_path):
    run_dir = write_run(tmp_path, sample_cells())
    rows = {r.test: r for r in matrix(load_run(run_dir))}
    hugetlb = "vfio_dma_mapping_test.vfio_type1_iommu_anonymous_hugetlb_1gb.dma_map_unmap"
    assert rows[hugetlb].changed_keys == ["iopte_size"]  # not container_provider
    assert not rows["vfio_pci_driver_test.iommufd.memcpy_to_unmapped_region"].differs


def attributed(*dmesg: str) -> dict[str, list[str]]:
    """A record's kernel fields as the triage fills them from these dmesg lines."""
    lines = list(dmesg)
    return {"dmesg": lines, "kernel": [f"{k}: {line}" for k, line, _ in alarms(lines)]}


RESET = ["[ 3.1] vfio-pci 0000:00:03.0: resetting", "[ 3.2] vfio-pci 0000:00:03.0: reset done"]
DMAR = "[ 3.3] DMAR: [DMA Write NO_PASID] Request device [00:03.0] fault addr 0x1000"


def row_and_details(html: str, test: str) -> tuple[str, str]:
    row = re.search(rf"<tr [^>]*data-test='{re.escape(test)}'>.*?</tr>", html)
    section = re.search(rf"<section id=t\d+><h3>{re.escape(test)}</h3>.*?</section>", html, re.S)
    assert row and section
    return row.group(0), section.group(0)


def test_only_what_deserves_a_look_is_marked(tmp_path):
    """Every test has routine driver lines (a vfio-pci reset): they are no alarm. A DMAR
    fault, a splat, or a driver line telling of a failure is."""
    cells = {
        "c": [
            rec("t.routine", "pass", **attributed(*RESET)),
            rec("t.fault", "pass", **attributed(RESET[0], DMAR)),
            rec("t.failed", "pass", **attributed("[ 3.4] vfio-pci 0000:00:04.0: probe failed")),
            rec("t.quiet", "pass"),
        ]
    }
    html = (write_run(tmp_path, cells) / reports.HTML).read_text()
    row, details = row_and_details(html, "t.routine")
    assert "&#9888;" not in row
    assert "<details><summary>" in details and "<details open>" not in details
    assert "kernel alarms" not in details
    shown = re.search(r"<details class=routine><summary>2 routine kernel lines</summary>", details)
    assert shown and "vfio-pci 0000:00:03.0: resetting" in details
    row, details = row_and_details(html, "t.fault")
    assert "<span title='kernel: iommu fault'>&#9888;</span>" in row
    assert "<details open>" in details
    alarm = re.search(r"kernel alarms:<pre class='alarm'>(.*?)</pre>", details, re.S)
    assert alarm and "DMAR: [DMA Write NO_PASID]" in alarm.group(1)
    assert "resetting" not in alarm.group(1)
    assert "1 routine kernel line</summary>" in details
    row, _ = row_and_details(html, "t.failed")
    assert "<span title='kernel: vfio'>&#9888;</span>" in row
    assert "&#9888;" not in row_and_details(html, "t.quiet")[0]


def test_a_record_keeps_its_duration_through_tests_json(tmp_path):
    timed = rec("t.a", duration_s=1.25)
    old = {k: v for k, v in asdict(rec("t.b")).items() if k != "duration_s"}
    run_dir = write_run(tmp_path, {"c": [timed]})
    assert load_run(run_dir).cells[0].records == [timed]
    # A record from before durations were kept still loads: its duration is unknown.
    assert TestRecord.from_dict(old).duration_s is None


def timed(durations: dict[str, float | None]) -> list[TestRecord]:
    return [rec(name, duration_s=d) for name, d in durations.items()]


def test_the_slowest_come_first_ties_by_name_unknown_left_out():
    recs = timed({"t.b": 2.0, "t.none": None, "t.a": 2.0, "t.c": 9.5, "t.d": 0.0})
    assert [r.name for r in slowest(recs)] == ["t.c", "t.a", "t.b", "t.d"]
    assert slowest(timed({"t.none": None})) == []


def test_only_ten_and_never_a_subtest():
    recs = timed({f"t.{i:02}": float(i) for i in range(15)} | {"t.14/inner": 99.0})
    assert [r.name for r in slowest(recs)] == [f"t.{i:02}" for i in range(14, 4, -1)]


def test_report_lists_each_cells_slowest_tests(tmp_path):
    cells = {
        "a": timed({f"t.{i:02}": float(i) for i in range(12)} | {"t.x": None}),
        "b": timed({"t.x": None}),
    }
    run_dir = write_run(tmp_path, cells)
    done = subprocess.run(
        [sys.executable, "-m", "lab", "report", str(run_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == ["a: slowest 10", "     11.00 s  t.11 (pass)", "     10.00 s  t.10 (pass)"]
    assert lines[10:13] == [
        "      2.00 s  t.02 (pass)",
        "b: no test durations",
        str(run_dir / reports.HTML),
    ]
    html = (run_dir / reports.HTML).read_text()
    section = html.split("<h2 id=slowest>")[1].split("</table>")[0]
    assert section.count("<tr>") == 1 + 10 + 1  # the head, a's ten, b's none
    assert ">t.11</a><td>11.00 s<td>" in section and "t.01" not in section
    assert "no test durations recorded" in section
