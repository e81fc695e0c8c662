"""junit.xml and report.html from a run written by the real RunResults; golden files."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from lab.results import reports
from lab.results.rundir import load_run, matrix
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
