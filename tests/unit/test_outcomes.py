"""The outcome model: complete, its classes exactly what the gates judge by, and the only
place under lab/ that spells out a class of outcomes."""

from __future__ import annotations

import ast

import pytest

from lab.results import htmlreport
from lab.results import outcomes as o
from tests.conftest import REPO

# Per outcome, whether it belongs to each class: written out, not derived, so that a
# class changed in the model fails here.
CLASSES = {
    "UNEXPECTED": o.UNEXPECTED,
    "WRONG": o.WRONG,
    "BROKEN": o.BROKEN,
    "FAILED": o.FAILED,
    "CLEAN": o.CLEAN,
    "GOOD": o.GOOD,
    "RAN": o.RAN,
    "JUNIT_CONSOLE": o.JUNIT_CONSOLE,
}
MEMBERSHIP = {
    #         UNEXPECTED WRONG  BROKEN FAILED CLEAN  GOOD   RAN    JUNIT_CONSOLE
    "pass":   (False,    False, False, False, True,  True,  True,  False),
    "fail":   (True,     True,  False, True,  False, False, True,  True),
    "skip":   (False,    False, False, False, True,  True,  False, False),
    "xfail":  (False,    False, False, False, False, True,  True,  False),
    "xpass":  (True,     True,  False, False, False, False, True,  False),
    "error":  (True,     False, True,  True,  False, False, True,  True),
    "notrun": (True,     False, True,  False, False, False, False, True),
}  # fmt: skip
KCIDB_STATUSES = {"FAIL", "ERROR", "MISS", "PASS", "DONE", "SKIP"}  # KCIDB schema 5
JUNIT_ELEMENTS = {None, "failure", "error", "skipped"}


def test_the_constants_are_the_outcomes() -> None:
    constants = (o.PASS, o.FAIL, o.SKIP, o.XFAIL, o.XPASS, o.ERROR, o.NOTRUN)
    assert o.ALL == constants == ("pass", "fail", "skip", "xfail", "xpass", "error", "notrun")
    assert sorted(o.SHOWN_ORDER) == sorted(o.ALL)
    assert set(MEMBERSHIP) == set(o.ALL)


@pytest.mark.parametrize("outcome", o.ALL)
def test_every_outcome_belongs_to_exactly_its_classes(outcome: str) -> None:
    belongs = {name: outcome in members for name, members in CLASSES.items()}
    assert belongs == dict(zip(CLASSES, MEMBERSHIP[outcome], strict=True))


@pytest.mark.parametrize("name", CLASSES)
def test_every_class_holds_only_outcomes(name: str) -> None:
    assert CLASSES[name] <= set(o.ALL)


def test_every_outcome_has_a_symbol_a_kcidb_status_and_a_junit_element() -> None:
    for mapping in (o.SYMBOL, o.KCIDB_STATUS, o.JUNIT_ELEMENT):
        assert set(mapping) == set(o.ALL)
    symbols = list(o.SYMBOL.values())
    assert len(set(symbols)) == len(symbols) and all(len(s) == 1 for s in symbols)
    assert not {"-", "?"} & set(symbols)  # history's absent and unknown nights
    assert set(o.KCIDB_STATUS.values()) <= KCIDB_STATUSES
    assert set(o.JUNIT_ELEMENT.values()) <= JUNIT_ELEMENTS


def test_the_classes_fit_together() -> None:
    assert o.UNEXPECTED == o.WRONG | o.BROKEN and not o.WRONG & o.BROKEN
    assert set(o.ALL) - o.UNEXPECTED == o.GOOD
    # junit's elements are the cell's verdict classes: failure = fail, error = error.
    for outcome in o.ALL:
        element = o.JUNIT_ELEMENT[outcome]
        assert (element == "failure") == (outcome in o.WRONG)
        assert (element == "error") == (outcome in o.BROKEN)
        assert (element is None) == (outcome == o.PASS)
    # KCIDB: only what failed by its own doing is a FAIL.
    assert {k for k, v in o.KCIDB_STATUS.items() if v == "FAIL"} == {o.FAIL, o.XFAIL}


def test_a_marked_xfail_or_xpass_was_a_fail_or_a_pass() -> None:
    assert o.RAW_OF_MARKED == {o.XFAIL: o.FAIL, o.XPASS: o.PASS}


def test_the_legend_names_every_symbol_in_the_shown_order() -> None:
    assert o.LEGEND == "P pass, F fail, E error, N not run, S skip, x xfail, U xpass"


def test_count_counts_every_outcome_in_summary_order() -> None:
    assert o.count(["fail", "pass", "fail"]) == {
        "pass": 1, "fail": 2, "skip": 0, "xfail": 0, "xpass": 0, "error": 0, "notrun": 0,
    }  # fmt: skip
    assert list(o.count(())) == list(o.ALL)
    with pytest.raises(KeyError):
        o.count(["passed"])


def test_the_html_report_colours_every_outcome() -> None:
    for outcome in o.ALL:
        assert f".o-{outcome}" in htmlreport.CSS
    for outcome in o.UNEXPECTED:
        assert f".r-{outcome}" in htmlreport.CSS


# -- no other module spells out its own class of outcomes --------------------------------
MODEL = REPO / "lab" / "results" / "outcomes.py"
OUTCOME_FIELDS = {"outcome", "raw", "raw_outcome"}


def _outcome_strings(nodes: list[ast.expr | None]) -> set[str]:
    return {
        n.value
        for n in nodes
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in o.ALL
    }


def _names_an_outcome(node: ast.expr) -> bool:
    """rec.outcome, rec.raw, outcome, triage.raw_outcome(rec) and the like."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr in OUTCOME_FIELDS
    return isinstance(node, ast.Name) and node.id in OUTCOME_FIELDS


def own_outcomes(source: str, filename: str) -> list[str]:
    """Where a module spells out outcomes itself: a tuple, list, set or dict display with two
    or more of them (a class or a map of its own), or a test's outcome compared with one."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            spelled = _outcome_strings(list(node.elts))
            if len(spelled) >= 2:
                found.append(f"{filename}:{node.lineno}: {sorted(spelled)}")
        elif isinstance(node, ast.Dict):
            spelled = _outcome_strings([*node.keys, *node.values])
            if len(spelled) >= 2:
                found.append(f"{filename}:{node.lineno}: {sorted(spelled)}")
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            literals = [
                e for s in sides for e in (s.elts if isinstance(s, ast.Tuple | ast.Set) else [s])
            ]
            spelled = _outcome_strings(list(literals))
            if spelled and any(_names_an_outcome(s) for s in sides):
                found.append(f"{filename}:{node.lineno}: compared with {sorted(spelled)}")
    return found


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ('UNEXPECTED = ("fail", "error", "xpass", "notrun")', True),
        ('GOOD = frozenset({"pass", "skip"})', True),
        ('STATUS = {"pass": "PASS", "fail": "FAIL"}', True),
        ('RAW = {"xfail": "fail"}', True),
        ('x = rec.outcome in ["error", "notrun"]', True),
        ('x = rec.outcome == "pass"', True),
        ('x = "xfail" == rec.raw', True),
        ('x = triage.raw_outcome(r) != "pass"', True),
        ('Verdict = Literal["pass", "fail"]', True),
        # What is not a class of outcomes: a cell's verdict, a word that is also one.
        ('x = c["verdict"] != "pass"', False),
        ('Verdict = Literal["good", "bad", "skip"]', False),
        ('e = ET.SubElement(case, "error", message=m)', False),
        ("x = rec.outcome in UNEXPECTED", False),
    ],
)
def test_the_scan_catches_a_class_of_its_own(source: str, caught: bool) -> None:
    assert bool(own_outcomes(source, "m.py")) == caught


def test_no_module_under_lab_spells_out_its_own_outcomes() -> None:
    modules = sorted((REPO / "lab").rglob("*.py"))
    assert MODEL in modules and len(modules) > 50  # the scan sees the source tree
    found = [
        hit
        for path in modules
        if path != MODEL
        for hit in own_outcomes(path.read_text(), str(path.relative_to(REPO)))
    ]
    assert not found, "use lab.results.outcomes instead:\n" + "\n".join(found)
