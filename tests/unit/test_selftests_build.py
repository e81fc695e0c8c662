"""Building a C suite from a kernel tree: real make and patch on a tiny fake tree (a
`headers` target, a selftest directory with one program), no kernel."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lab.artifacts.kbuild import SourceTree
from lab.artifacts.selftests import payload_programs, provide_selftests
from lab.core.cache import Cache
from lab.core.errors import BuildError
from lab.model.arches import ARCHES, host_arch
from lab.model.suites import SUITES

SUITE = SUITES["kselftest-vfio"]
NATIVE = ARCHES[host_arch()]
TOP = "headers:\n\tmkdir -p $(O)/usr/include/linux\n\techo '#define LAB 1' > $(O)/usr/include/linux/lab.h\n"
SELFTEST = (
    "$(OUTPUT)/vfio_prog_test: prog.c\n"
    "\t$(CC) $(KHDR_INCLUDES) -Werror=implicit-function-declaration -o $@ prog.c\n"
)
PROG = "#include <linux/lab.h>\nint main(void) { return helper() + LAB - 1; }\n"
COMPAT = """--- a/tools/testing/selftests/vfio/prog.c
+++ b/tools/testing/selftests/vfio/prog.c
@@ -1,2 +1,3 @@
 #include <linux/lab.h>
+static int helper(void) { return 0; }
 int main(void) { return helper() + LAB - 1; }
"""


def tree(tmp_path: Path, prog: str = PROG, with_suite: bool = True) -> SourceTree:
    root = tmp_path / "linux"
    where = root / "tools/testing/selftests/vfio"
    where.mkdir(parents=True)
    (root / "Makefile").write_text(TOP)
    if with_suite:
        (where / "Makefile").write_text(SELFTEST)
        (where / "prog.c").write_text(prog)
    else:
        where.rmdir()
    return SourceTree("linux-source-7.2=7.2.13-1", root, owned=True)


def recipes(tmp_path: Path, lines: str) -> Path:
    root = tmp_path / "recipes"
    (root / "vfio").mkdir(parents=True)
    (root / "vfio" / "series").write_text(lines)
    (root / "vfio" / "0001-compat.patch").write_text(COMPAT)
    return root


def test_a_tree_that_builds_as_shipped_gets_no_compat_patch(tmp_path):
    fixed = PROG.replace("int main", "static int helper(void) { return 0; }\nint main")
    t = tree(tmp_path, fixed)
    built = provide_selftests(
        SUITE,
        t,
        NATIVE,
        Cache(tmp_path / "cache"),
        print,
        recipes(tmp_path, "compat 0001-compat.patch\n"),
    )
    assert (built.programs, built.compat, built.absent) == (("vfio_prog_test",), (), "")
    program = Path(built.bin) / "vfio_prog_test"
    assert subprocess.run([program], check=False).returncode == 0
    assert not (t.path / "usr").exists(), "the headers went into the source tree"


def test_a_tree_that_needs_a_compat_patch_says_so(tmp_path):
    cache = Cache(tmp_path / "cache")
    built = provide_selftests(
        SUITE,
        tree(tmp_path),
        NATIVE,
        cache,
        print,
        recipes(tmp_path, "compat 0001-compat.patch  # 7.2\n"),
    )
    assert built.compat == ("0001-compat.patch",) and built.programs == ("vfio_prog_test",)


def test_a_tree_without_the_suite_is_absent_and_a_broken_one_an_error(tmp_path):
    built = provide_selftests(
        SUITE,
        tree(tmp_path, with_suite=False),
        NATIVE,
        Cache(tmp_path / "c1"),
        print,
        recipes(tmp_path, ""),
    )
    assert built.absent == "linux-source-7.2=7.2.13-1 has no tools/testing/selftests/vfio"
    with pytest.raises(BuildError):
        provide_selftests(
            SUITE,
            tree(tmp_path / "b"),
            NATIVE,
            Cache(tmp_path / "c2"),
            print,
            recipes(tmp_path / "b", ""),
        )


def test_of_several_versions_of_a_patch_the_one_that_applies_is_used(tmp_path):
    fixed = PROG.replace("int main", "static int helper(void) { return 0; }\nint main")
    root = recipes(tmp_path, "lab 0002-old.patch 0002-new.patch\n")
    old = COMPAT.replace("#include <linux/lab.h>\n+", "#include <linux/other.h>\n+")
    (root / "vfio" / "0002-old.patch").write_text(old.replace("static int helper", "int x"))
    new = "--- a/tools/testing/selftests/vfio/prog.c\n+++ b/tools/testing/selftests/vfio/prog.c\n"
    new += "@@ -1,2 +1,3 @@\n #include <linux/lab.h>\n+/* patched */\n"
    new += " static int helper(void) { return 0; }\n"
    (root / "vfio" / "0002-new.patch").write_text(new)
    built = provide_selftests(
        SUITE, tree(tmp_path, fixed), NATIVE, Cache(tmp_path / "c"), print, root
    )
    assert built.patches == ("0002-new.patch",)


def test_the_payloads_own_programs_are_its_executables(tmp_path):
    suite = SUITES["programs"]
    where = tmp_path / "programs"
    where.mkdir()
    assert payload_programs(suite, tmp_path).absent == f"{where} holds no executable"
    for name, mode in (("b_test", 0o755), ("a_test", 0o755), ("notes.txt", 0o644)):
        (where / name).write_text("#!/bin/sh\n")
        (where / name).chmod(mode)
    built = payload_programs(suite, tmp_path)
    assert (built.bin, built.programs, built.absent) == (str(where), ("a_test", "b_test"), "")
