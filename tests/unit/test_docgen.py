"""The generated pages held to the code: docs/commands.md to the parser, docs/scenarios.md
to what `vfio-lab schema` prints. VFIO_LAB_REGEN_GOLDEN=1 (or `make docs`) rewrites them."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import pytest

from lab.cli import build_parser, docgen
from lab.cli.info import registries
from lab.model import scenario
from lab.model.schema import describe
from tests.conftest import REPO

DOCS = REPO / "docs"


def test_the_generated_pages_match_the_code():
    if os.environ.get("VFIO_LAB_REGEN_GOLDEN") == "1":
        docgen.stale(DOCS, write=True)
    stale = docgen.stale(DOCS)
    assert not stale, f"{', '.join(map(str, stale))}: not what the code says; run `make docs`"


def test_every_command_and_option_is_in_the_reference():
    """Walks the parser itself, not the generator: a command or option the generator
    dropped is missing here even if the page matches the generator."""
    text = (DOCS / "commands.md").read_text()
    missing = []

    def walk(prog: str, p: argparse.ArgumentParser) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(f"{prog} {name}", sub)
                helps = [a.help for a in action._choices_actions if a.help]
                missing.extend(h for h in helps if h.replace("|", "\\|") not in text)
            elif not isinstance(action, argparse._HelpAction):
                missing.extend(f"{prog} {o}" for o in action.option_strings if o not in text)
                if action.help and action.help.replace("|", "\\|") not in text:
                    missing.append(f"{prog}: help of {action.dest}")
        if f"`{prog}`" not in text:
            missing.append(prog)

    walk("vfio-lab", build_parser())
    assert not missing


def test_every_field_and_registry_entry_is_in_the_scenarios_page():
    text = (DOCS / "scenarios.md").read_text()
    names = [key for key, _, _ in describe(scenario.Scenario)]
    names += [name for _, rows in registries() for name, _ in rows]
    names += scenario.builtin_names()
    assert [n for n in names if f"`{n}`" not in text] == []


def copy_docs(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in docgen.PAGES:
        shutil.copy(DOCS / name, docs / name)
    return docs


def test_a_page_that_lags_the_code_is_stale_and_prose_is_free(tmp_path):
    docs = copy_docs(tmp_path)
    commands = docs / "commands.md"
    lines = commands.read_text().splitlines(keepends=True)
    commands.write_text("".join(line for line in lines if "`--retries N`" not in line))
    scenarios = docs / "scenarios.md"
    scenarios.write_text("Prose outside the block is the author's.\n" + scenarios.read_text())
    assert docgen.stale(docs) == [commands]
    assert docgen.main(["--check", "--docs", str(docs)]) == 1
    assert "`--retries N`" not in commands.read_text()  # --check writes nothing
    assert docgen.main(["--docs", str(docs)]) == 0
    assert docgen.stale(docs) == []
    assert scenarios.read_text().startswith("Prose outside the block is the author's.\n")


def test_an_edit_inside_the_block_is_stale(tmp_path):
    docs = copy_docs(tmp_path)
    scenarios = docs / "scenarios.md"
    scenarios.write_text(scenarios.read_text().replace("guest vCPUs", "guest CPUs"))
    assert docgen.stale(docs) == [scenarios]


def test_a_new_command_or_option_changes_the_reference():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    new = sub.add_parser("frobnicate", help="turn the knob")
    new.add_argument("--widget", metavar="N", help="how far")
    new.add_argument("runs", nargs="+", metavar="RUN_DIR")
    text = docgen.commands_markdown(parser)
    assert "| `vfio-lab frobnicate` | turn the knob |" in text
    assert "vfio-lab frobnicate [options] RUN_DIR [RUN_DIR ...]" in text
    assert "| `--widget N` | how far |" in text
    assert text != docgen.commands_markdown()


def test_a_page_without_its_block_is_refused(tmp_path, capsys):
    docs = copy_docs(tmp_path)
    (docs / "scenarios.md").write_text("# Scenarios\n\nno block here\n")
    with pytest.raises(docgen.MarkersMissing, match=r"scenarios\.md: no generated block"):
        docgen.stale(docs)
    assert docgen.main(["--check", "--docs", str(docs)]) == 2
    assert "scenarios.md: no generated block" in capsys.readouterr().err


def test_table_cells_keep_pipes_literal():
    assert docgen.cell("auto | kvm") == "auto \\| kvm"
