"""Property-based tests: whatever a guest prints, the parser neither crashes nor invents."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from lab.results.tap import TapParser, parse_text

# No per-example deadline: a busy CI machine must not turn slowness into a failure.
settings.register_profile("vfio-lab", deadline=None, print_blob=True)
settings.load_profile("vfio-lab")

OUTCOME_LINES = {
    "pass": ("ok", ""),
    "fail": ("not ok", ""),
    "skip": ("ok", " # SKIP {}"),
    "xfail": ("not ok", " # TODO {}"),
    "xpass": ("ok", " # TODO {}"),
    "error": ("not ok", " # ERROR {}"),
}

word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.=[]/#", min_size=1, max_size=12)
name = st.builds(lambda a, b: f"{a} {b}".strip(), word, st.one_of(st.just(""), word)).filter(
    lambda n: not n.startswith(("#", "-", "/")) and not n[0].isdigit() and not n.endswith("\\")
)
text = st.text(alphabet="abcdefghij :=0123456789", min_size=1, max_size=20).map(str.strip)
reason = text.filter(bool)
diagnostic = text.filter(lambda t: bool(t) and not t.startswith(("Subtest",)))


@dataclass
class Node:
    name: str
    outcome: str
    reason: str
    diagnostics: list[str]
    subtests: list[Node] = field(default_factory=list)


def nodes(depth: int) -> st.SearchStrategy[list[Node]]:
    children = nodes(depth - 1) if depth else st.just([])
    return st.lists(
        st.builds(
            Node,
            name=name,
            outcome=st.sampled_from(sorted(OUTCOME_LINES)),
            reason=reason,
            diagnostics=st.lists(diagnostic, max_size=3),
            subtests=children,
        ),
        min_size=1,
        max_size=4,
    )


def render(tests: list[Node], indent: str = "") -> list[str]:
    """TAP 14 as a well-behaved producer writes it (the parser's inverse, for the tests)."""
    lines = [f"{indent}1..{len(tests)}"]
    for i, t in enumerate(tests, 1):
        if t.subtests:
            lines.append(f"{indent}    # Subtest: {t.name}")
            lines += render(t.subtests, indent + "    ")
        lines += [f"{indent}# {d}" for d in t.diagnostics]
        status, directive = OUTCOME_LINES[t.outcome]
        escaped = t.name.replace("#", "\\#")
        lines.append(f"{indent}{status} {i} - {escaped}{directive.format(t.reason)}")
    return lines


def shape(results: list) -> list[tuple]:
    """Parsed results and generated nodes alike (they share the attribute names)."""
    return [
        (
            r.name,
            r.outcome,
            r.reason if r.outcome not in ("pass", "fail") else "",
            r.diagnostics,
            shape(r.subtests),
        )
        for r in results
    ]


@given(st.lists(st.text(), max_size=30))
def test_any_lines_never_crash(lines):
    parser = TapParser()
    for line in lines:
        parser.feed(line)
    parser.problems(), parser.counts(), parser.to_dict(), list(parser.flat())


tap_ish = st.one_of(
    st.sampled_from(["ok", "not ok", "1..", "#", "    ", "---", "...", "Bail out!", "\\#"]),
    st.text(max_size=8),
    st.integers(0, 5).map(str),
)


@given(st.lists(st.lists(tap_ish, max_size=6).map("".join), max_size=40))
def test_tap_like_noise_never_crashes(lines):
    parser = parse_text("\n".join(lines))
    assert sum(parser.counts().values()) >= len(parser.results)


@settings(max_examples=200)
@given(nodes(depth=2))
def test_round_trip(tests):
    tap = parse_text("\n".join(["TAP version 14", *render(tests)]))
    assert shape(tap.results) == shape(tests)
    assert tap.problems() == []
    assert tap.garbage == 0


@given(nodes(depth=2), st.data())
def test_truncation_keeps_a_prefix_and_says_so(tests, data):
    lines = ["TAP version 14", *render(tests)]
    cut = data.draw(st.integers(0, len(lines) - 1))
    tap = parse_text("\n".join(lines[:cut]))
    full = shape(tests)
    got = shape(tap.results)
    assert got == full[: len(got)]
    assert tap.problems(), "a cut-short document must say something is missing"


garbage_line = st.text(alphabet="abcdefghijklmnopqrstuvwxyz[]. :\x1b\x00", max_size=30).filter(
    lambda s: not s.strip().startswith(("ok", "not ok", "#", "1..", "Bail", "TAP", "KTAP", "---"))
)


@given(nodes(depth=1), st.lists(st.tuples(st.integers(0, 200), garbage_line), max_size=10))
def test_garbage_lines_change_nothing(tests, noise):
    lines = ["TAP version 14", *render(tests)]
    for at, junk in sorted(noise, reverse=True):
        lines.insert(min(at, len(lines)), junk)
    tap = parse_text("\n".join(lines))
    assert shape(tap.results) == shape(tests)
    assert tap.problems() == []
