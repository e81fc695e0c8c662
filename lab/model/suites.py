"""The test suites a cell can run (`payload.suites`): the lab's own pytest payload, and
the kernel's C selftests built from the cell's own kernel tree.

The registry here knows each suite's name and needs; `lab.artifacts.selftests` builds the
C suites (and finds the payload's own programs), and `lab.run.payload` runs them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, NoReturn

from lab.core.errors import UsageError
from lab.core.registry import Registry


class Suite:
    name: ClassVar[str]
    doc: ClassVar[str]
    selftest_dir: ClassVar[str | None] = None  # tools/testing/selftests/<dir> (C suites)
    programs_dir: ClassVar[str | None] = None  # <payload>/<dir>: programs built elsewhere
    needs_device: ClassVar[bool] = True  # its programs take the device's BDF


class LabSuite(Suite):
    name = "lab"
    doc = "the lab's pytest payload (guest_tests/, or payload.tests)"


class KselftestVfio(Suite):
    name = "kselftest-vfio"
    doc = "the kernel's tools/testing/selftests/vfio, with the lab's edu driver for its library"
    selftest_dir = "vfio"


class KselftestIommu(Suite):
    name = "kselftest-iommu"
    doc = "the kernel's tools/testing/selftests/iommu: iommufd and iommufd_fail_nth (no device)"
    selftest_dir = "iommu"
    needs_device = False


class PayloadPrograms(Suite):
    name = "programs"
    doc = (
        "the payload's own programs: every executable in programs/ of the payload "
        "directory, printing KTAP, run as the C selftests are (the device's BDF as argument)"
    )
    programs_dir = "programs"


SUITES: Registry[Suite] = Registry(
    "suite", {s.name: s() for s in (LabSuite, KselftestVfio, KselftestIommu, PayloadPrograms)}
)
DEFAULT_SUITE = LabSuite.name


# pytest's own -k grammar (src/_pytest/mark/expression.py): `or`, `and`, `not`,
# parentheses, and identifiers that match names as case-insensitive substrings.
_TOKEN = re.compile(r"(?P<space>\s+)|(?P<token>[()]|[\w:+\-.\[\]\\/]+)|(?P<bad>.)", re.S)
_OPERATORS = ("or", "and", "not")


@dataclass(frozen=True)
class Keyword:
    """A pytest-style `-k` expression, for the suites pytest does not run: `vfio-lab
    bisect` selects a C suite's tests by matching it against their `suite:id` names
    (the lab's own suite is selected by pytest itself, in the guest)."""

    text: str
    _test: Callable[[str], bool] = field(repr=False, compare=False)

    def matches(self, name: str) -> bool:
        return self._test(name.lower())


def parse_keyword(text: str) -> Keyword:
    """The expression `text` (empty: every test); UsageError saying where it is wrong."""
    return Keyword(text, _KeywordParser(text).parse())


class _KeywordParser:
    """Recursive descent: any_of := all_of ("or" all_of)*; all_of := term ("and" term)*;
    term := "not" term | "(" any_of ")" | identifier."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[int, str]] = []  # (column, token)
        for m in _TOKEN.finditer(text):
            if m.lastgroup == "bad":
                self.fail(m.start(), f"unexpected character {m.group()!r}")
            if m.lastgroup == "token":
                self.tokens.append((m.start(), m.group()))
        self.at = 0

    def fail(self, column: int, message: str) -> NoReturn:
        raise UsageError(f"-k {self.text!r}: column {column + 1}: {message}")

    def peek(self) -> str | None:
        return self.tokens[self.at][1] if self.at < len(self.tokens) else None

    def take(self) -> tuple[int, str]:
        if self.at == len(self.tokens):
            self.fail(len(self.text), "the expression ends too early")
        self.at += 1
        return self.tokens[self.at - 1]

    def parse(self) -> Callable[[str], bool]:
        if not self.tokens:
            return lambda name: True
        test = self.any_of()
        if self.at < len(self.tokens):
            column, token = self.tokens[self.at]
            self.fail(column, f"unexpected {token!r}")
        return test

    def any_of(self) -> Callable[[str], bool]:
        tests = [self.all_of()]
        while self.peek() == "or":
            self.take()
            tests.append(self.all_of())
        return tests[0] if len(tests) == 1 else lambda name: any(t(name) for t in tests)

    def all_of(self) -> Callable[[str], bool]:
        tests = [self.term()]
        while self.peek() == "and":
            self.take()
            tests.append(self.term())
        return tests[0] if len(tests) == 1 else lambda name: all(t(name) for t in tests)

    def term(self) -> Callable[[str], bool]:
        column, token = self.take()
        if token == "not":
            inner = self.term()
            return lambda name: not inner(name)
        if token == "(":
            inner = self.any_of()
            if self.peek() != ")":
                self.fail(column, "this ( is never closed")
            self.take()
            return inner
        if token == ")" or token in _OPERATORS:
            self.fail(column, f"unexpected {token!r}")
        word = token.lower()
        return lambda name: word in name
