"""Building a C suite from a kernel tree: real make and patch on a tiny fake tree (a
`headers` target, a selftest directory with one program), no kernel; and what a cross
build for another arch adds (its make arguments, its sysroot, its keys), without one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lab.artifacts import selftests
from lab.artifacts.apt import RELEASE, PrivateApt
from lab.artifacts.kbuild import SourceTree
from lab.artifacts.patches import patches_digest
from lab.artifacts.selftests import (
    LIBRARIES,
    Target,
    headers_args,
    make_args,
    payload_programs,
    provide_selftests,
    selftests_key,
    target_for,
)
from lab.artifacts.sysroot import Sysroot, pinned_packages, provide_sysroot, sysroot_key
from lab.core.cache import Cache, content_key
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


# -- cross builds for another arch ----------------------------------------------------------

X86, ARM = ARCHES["x86_64"], ARCHES["aarch64"]
ARM_ROOT = Sysroot(Path("/c/sysroot/k"), "aarch64-linux-gnu", "k")
NATIVE_X86 = Target(X86, "x86_64", None)
CROSS_ARM = Target(ARM, "x86_64", ARM_ROOT)
SRC = SourceTree("linux-source-7.2=7.2.13-1", Path("/src/linux"), owned=True)
WHERE = Path("tools/testing/selftests/vfio")


def test_a_native_build_runs_the_commands_it_always_ran() -> None:
    jobs = f"-j{os.cpu_count() or 1}"
    assert headers_args(SRC, NATIVE_X86, Path("/s/obj")) == [
        "make", "-C", Path("/src/linux"), "O=/s/obj", jobs, "headers"
    ]  # fmt: skip
    assert make_args(SRC, WHERE, Path("/s/h"), NATIVE_X86, Path("/s/out")) == [
        "make", "-C", Path("/src/linux") / WHERE, jobs, "OUTPUT=/s/out",
        "KHDR_INCLUDES=-isystem /s/h",
    ]  # fmt: skip


def test_a_cross_build_gives_kbuild_the_arch_and_lib_mk_the_sysroot_and_static() -> None:
    cross = ["ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"]
    headers = headers_args(SRC, CROSS_ARM, Path("/s/obj"))
    assert headers[-3:] == [*cross, "headers"]  # the arm64 uAPI (asm/), not the host's
    argv = make_args(SRC, WHERE, Path("/s/h"), CROSS_ARM, Path("/s/out"))
    assert argv[-4:] == [
        *cross,
        # lib.mk's own hooks: a CFLAGS= would replace the suites' CFLAGS (vfio sets it with =).
        "USERCFLAGS=-isystem /c/sysroot/k/usr/include",
        "USERLDFLAGS=-static -L/c/sysroot/k/usr/lib/aarch64-linux-gnu",
    ]
    assert not any(str(a).startswith(("CFLAGS=", "LDFLAGS=")) for a in argv)


def test_a_native_key_is_as_before_arches_and_a_cross_key_names_what_it_adds(monkeypatch) -> None:
    monkeypatch.setattr(selftests, "compiler_identity", lambda cross="": f"{cross}gcc 12")
    before = content_key(["selftests", SUITE.name, SRC.identity, patches_digest([]), "gcc 12"])
    assert selftests_key(SUITE, SRC, [], NATIVE_X86) == before
    cross = selftests_key(SUITE, SRC, [], CROSS_ARM)
    assert cross == content_key(
        ["selftests", SUITE.name, SRC.identity, patches_digest([]),
         "aarch64-linux-gnu-gcc 12", "aarch64", "k"]
    )  # fmt: skip
    other_libraries = Target(ARM, "x86_64", Sysroot(ARM_ROOT.path, ARM_ROOT.triplet, "k2"))
    assert selftests_key(SUITE, SRC, [], other_libraries) != cross


def test_only_a_cross_build_gets_a_sysroot_of_the_suites_libraries(tmp_path, monkeypatch) -> None:
    asked: list[tuple[tuple[str, ...], str]] = []

    def provide(packages: tuple[str, ...], arch, cache, progress) -> Sysroot:
        asked.append((packages, arch.name))
        return ARM_ROOT

    monkeypatch.setattr(selftests, "provide_sysroot", provide)
    monkeypatch.setattr(selftests, "host_arch", lambda: "x86_64")
    cache = Cache(tmp_path)
    assert target_for(X86, cache, print) == NATIVE_X86
    assert asked == []
    assert target_for(ARM, cache, print) == CROSS_ARM
    assert asked == [(LIBRARIES, "aarch64")]
    assert {"uuid-dev", "libcap-dev"} <= set(LIBRARIES)


def test_the_sysroot_pins_its_packages_in_bookworm_and_names_a_missing_one(tmp_path) -> None:
    class Apt(PrivateApt):
        def candidate(self, package: str) -> str | None:
            assert self.release == RELEASE == "bookworm"  # sid's may need a newer glibc
            return {"uuid-dev:arm64": "2.38.1-5"}.get(package)

    apt = Apt(Cache(tmp_path), mirror="http://m/debian", foreign="arm64", release=RELEASE)
    assert pinned_packages(("uuid-dev",), apt) == [("uuid-dev", "2.38.1-5")]
    with pytest.raises(BuildError, match="serves no libcap-dev:arm64 in bookworm"):
        pinned_packages(("uuid-dev", "libcap-dev"), apt)


def test_the_sysroot_key_names_the_packages_and_the_arch() -> None:
    pinned = [("uuid-dev", "2.38.1-5")]
    assert sysroot_key(pinned, ARM) != sysroot_key([("uuid-dev", "2.38.1-6")], ARM)
    assert sysroot_key(pinned, ARM) != sysroot_key(pinned, X86)
    assert (ARM_ROOT.include, ARM_ROOT.lib) == (
        Path("/c/sysroot/k/usr/include"),
        Path("/c/sysroot/k/usr/lib/aarch64-linux-gnu"),
    )


def deb(where: Path, package: str, files: dict[str, str]) -> Path:
    """A real .deb holding `files`, as apt-get download would leave it."""
    root = where / f"{package}-root"
    (root / "DEBIAN").mkdir(parents=True)
    control = f"Package: {package}\nVersion: 1\nArchitecture: arm64\nMaintainer: lab\n"
    (root / "DEBIAN" / "control").write_text(control + "Description: test\n")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    out = where / f"{package}_1_arm64.deb"
    subprocess.run(["dpkg-deb", "--build", root, out], check=True, capture_output=True)
    return out


def test_the_sysroot_is_the_packages_unpacked_once_into_the_cache(tmp_path, monkeypatch) -> None:
    made: list[str] = []

    def download_all(self: PrivateApt, pinned: list[tuple[str, str]], dest: Path) -> list[Path]:
        made.extend(p for p, _ in pinned)
        return [deb(dest, "uuid-dev", {"usr/include/uuid/uuid.h": "/* uuid */\n"})]

    monkeypatch.setattr(PrivateApt, "update", lambda self, progress: None)
    monkeypatch.setattr(PrivateApt, "candidate", lambda self, package: "1")
    monkeypatch.setattr(PrivateApt, "download_all", download_all)
    cache = Cache(tmp_path / "cache")
    root = provide_sysroot(("uuid-dev",), ARM, cache, print)
    assert (root.include / "uuid" / "uuid.h").read_text() == "/* uuid */\n"
    assert root.key == sysroot_key([("uuid-dev", "1")], ARM)
    assert root.path == cache.entry("sysroot", root.key)
    assert not list(root.path.glob("*.deb"))  # unpacked, not kept
    assert provide_sysroot(("uuid-dev",), ARM, cache, print) == root and made == ["uuid-dev"]
