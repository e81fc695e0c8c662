"""The documentation a newcomer walks: every relative link in README.md and docs/ leads
to a file (and heading) that exists, the README stays short and opens with the layout
and links every page, and costs.md names every package the host setup installs."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from tests.conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 200


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


# --- links ---------------------------------------------------------------------------

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+).*?\1")
INLINE_LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code, with code spans taken out."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(CODE_SPAN.sub("", line))
    return lines


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for line in prose_lines(page.read_text()):
        targets = INLINE_LINK.findall(line) + REFERENCE.findall(line)
        for target in targets:
            if SCHEME.match(target):
                continue
            path_part, _, anchor = unquote(target).partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            if not dest.exists():
                broken.append(f"{page.name}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.name}: {target}: no such heading")
    return broken


def test_every_relative_link_resolves():
    assert [b for page in pages() for b in broken_links(page)] == []


def test_the_link_check_finds_what_is_broken(tmp_path):
    (tmp_path / "there.md").write_text("# A `vfio-lab run` heading\n\n## Twice\n\n## Twice\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.md").write_text("[up](../there.md#twice-1)\n[bad](there.md)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) and [ok too](there.md#a-vfio-lab-run-heading) and [self](#local)\n"
        "[gone](missing.md) [`code` text](there.md#no-such-heading) ![img](pic.png)\n"
        "[web](https://example.org/x.md) [mail](mailto:a@b) `[in code](nope.md)`\n"
        "[%20](with%20space.md)\n"
        "```\n[in a fence](nope.md)\n```\n"
        "[ref]: ref-missing.md\n"
        "## Local\n"
    )
    assert broken_links(page) == [
        "page.md: missing.md: no such file",
        "page.md: there.md#no-such-heading: no such heading",
        "page.md: pic.png: no such file",
        "page.md: with%20space.md: no such file",
        "page.md: ref-missing.md: no such file",
    ]
    assert broken_links(tmp_path / "sub" / "deep.md") == ["deep.md: there.md: no such file"]


def test_github_heading_anchors():
    assert slug("`vfio-lab run`") == "vfio-lab-run"
    assert (
        slug("Shards: one matrix over several runners") == "shards-one-matrix-over-several-runners"
    )
    assert slug("The lab's QEMU and the [tweaked edu](x.md)") == "the-labs-qemu-and-the-tweaked-edu"


# --- the README ----------------------------------------------------------------------


def test_the_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


def test_the_readme_opens_with_the_layout_and_it_names_what_exists():
    lines = README.read_text().splitlines()
    sections = [line for line in lines if line.startswith("## ")]
    assert sections[0] == "## Layout"
    start = lines.index("## Layout")
    assert start < 20
    block = lines[lines.index("```", start) + 1 :]
    block = block[: block.index("```")]
    named = [line.split()[0] for line in block if line.split()]
    assert "docs/" in named and "lab/cli/" in named
    assert [d for d in named if not (REPO / d).is_dir()] == []


def test_the_readme_links_every_docs_page():
    linked = set()
    for line in prose_lines(README.read_text()):
        linked |= {(REPO / t).resolve() for t in INLINE_LINK.findall(line)}
    assert [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked] == []


# --- costs.md ------------------------------------------------------------------------


def test_costs_names_every_package_the_host_setup_installs():
    script = (REPO / "scripts" / "setup-host.sh").read_text()
    packages = []
    for block in re.findall(r"^[A-Z_]+=\(\s*#?[^\n]*\n(.*?)^\)", script, re.S | re.M):
        for line in block.splitlines():
            packages += line.split("#")[0].split()
    assert len(packages) > 20
    text = (DOCS / "costs.md").read_text()
    assert [p for p in packages if f"`{p}`" not in text] == []
