"""What a run leaves for people and CI besides summary.json: junit.xml, report.html, and
parity.json when a cell ran a C suite beside the lab's payload; and for the terminal,
each cell's slowest tests.

Both are rewritten after every cell, from the same data `vfio-lab report` reads back.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter

from lab.core.files import write_atomic
from lab.results import htmlreport, parity
from lab.results.history import CellTrend
from lab.results.outcomes import JUNIT_CONSOLE, JUNIT_ELEMENT
from lab.results.records import TestRecord, printable, slowest
from lab.results.rundir import MISSING_WHY, CellData, RunData

JUNIT = "junit.xml"
HTML = "report.html"


def write_all(run: RunData, trends: list[CellTrend] | None = None) -> None:
    write_atomic(run.dir / JUNIT, junit_xml(run))
    write_atomic(run.dir / HTML, htmlreport.render(run, trends))
    cells = parity.run_parity(run)
    if cells:
        write_atomic(run.dir / parity.PARITY, json.dumps(parity.to_json(cells), indent=2) + "\n")


def slowest_text(run: RunData) -> str:
    """Each cell's slowest tests with their wall times, for `vfio-lab report`."""
    lines = []
    for cell in run.cells:
        top = slowest(cell.records)
        lines.append(f"{cell.name}: " + (f"slowest {len(top)}" if top else "no test durations"))
        lines += [f"  {r.duration_s:8.2f} s  {r.name} ({r.outcome})" for r in top]
    return "\n".join(lines)


# -- junit.xml -----------------------------------------------------------------------------
def junit_xml(run: RunData) -> str:
    suites = ET.Element("testsuites", name=f"vfio-lab {run.summary.get('scenario', '')}")
    for cell in run.cells:
        suites.append(_suite(cell, run))
    for name in run.missing:
        suites.append(_missing_suite(name))
    ET.indent(suites)
    return printable(ET.tostring(suites, encoding="unicode", xml_declaration=True)) + "\n"


def _suite(cell: CellData, run: RunData) -> ET.Element:
    recs = cell.records
    n = Counter(JUNIT_ELEMENT.get(r.outcome) for r in recs)  # testcases per element
    s = cell.summary
    suite = ET.Element(
        "testsuite",
        name=cell.name,
        tests=str(len(recs) + bool(s.get("infra_error"))),
        failures=str(n["failure"]),
        errors=str(n["error"] + bool(s.get("infra_error"))),
        skipped=str(n["skipped"]),
        time=str(s.get("wall_s", 0)),
    )
    props = ET.SubElement(suite, "properties")
    for key in ("kernel", "kernel_release", "container_provider", "qemu_version", "verdict"):
        ET.SubElement(props, "property", name=key, value=str(s.get(key)))
    ET.SubElement(props, "property", name="accelerator", value=str(run.summary.get("accelerator")))
    if s.get("infra_error"):
        case = ET.SubElement(suite, "testcase", classname=cell.name, name="(cell)")
        error = ET.SubElement(case, "error", message=str(s["infra_error"]).splitlines()[0])
        error.text = str(s["infra_error"])
    for rec in recs:
        suite.append(_case(cell.name, rec))
    return suite


def _missing_suite(cell: str) -> ET.Element:
    """A promised cell no merged run had: an error, not a suite that is simply absent."""
    suite = ET.Element("testsuite", name=cell, tests="1", failures="0", errors="1", skipped="0")
    case = ET.SubElement(suite, "testcase", classname=cell, name="(cell)")
    ET.SubElement(case, "error", message=MISSING_WHY)
    return suite


def _case(cell: str, rec: TestRecord) -> ET.Element:
    module, _, rest = rec.name.partition(".")
    case = ET.Element("testcase", classname=f"{cell}.{module}", name=rest or rec.name)
    tag = JUNIT_ELEMENT.get(rec.outcome)
    if tag is not None:
        why = rec.reason or (rec.diagnostics[-1] if rec.diagnostics else "")
        message = f"{rec.outcome.upper()}: {why}" if why else rec.outcome.upper()
        element = ET.SubElement(case, tag, message=message)
        if tag != "skipped":
            element.text = "\n".join([*rec.diagnostics, *(f"kernel {k}" for k in rec.kernel)])
    if rec.dmesg:
        ET.SubElement(case, "system-out").text = "\n".join(rec.dmesg)
    if rec.console and rec.outcome in JUNIT_CONSOLE:
        ET.SubElement(case, "system-err").text = "\n".join(rec.console)
    return case
