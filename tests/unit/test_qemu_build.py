"""The lab's QEMU build, without building: its recipe per arch, what the host setup installs,
and the build's steps with each command faked."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.artifacts import qemu
from lab.cli import doctor
from lab.core.cache import Cache, content_key, tree_digest
from lab.model.arches import ARCHES
from tests.conftest import REPO

X86, ARM = ARCHES["x86_64"], ARCHES["aarch64"]


def test_setup_host_installs_every_build_dependency():
    script = (REPO / "scripts" / "setup-host.sh").read_text()
    block = script[
        script.index("QEMU_PACKAGES=(") : script.index(")", script.index("QEMU_PACKAGES=("))
    ]
    assert set(qemu.BUILD_DEPENDS) <= set(block.split())


def test_series_lists_patches_that_exist_in_order():
    names = qemu.series()
    assert names[0] == "0001-hw-misc-edu-add-an-optional-RAM-backed-64-bit-BAR.patch"
    assert all((qemu.PATCHES / name).is_file() for name in names)


def test_the_edu_patch_touches_edu_and_its_documentation():
    text = (qemu.PATCHES / qemu.series()[0]).read_text()
    assert "diff --git a/hw/misc/edu.c b/hw/misc/edu.c" in text
    assert "diff --git a/docs/specs/edu.rst b/docs/specs/edu.rst" in text
    assert "Signed-off-by:" in text


def test_ninja_progress_every_tenth(capsys):
    told: list[str] = []
    progress = qemu.NinjaProgress(lambda label, message: told.append(message))
    for i in range(1, 101):
        progress(f"[{i}/100] Compiling C object x.o")
    progress("garbage")
    assert told == [f"{i}/100 build steps" for i in (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)]


def test_a_path_needs_no_build_and_names_itself(tmp_path):
    assert (
        qemu.describe_qemu("/opt/qemu/bin/qemu-system-x86_64", X86)
        == "/opt/qemu/bin/qemu-system-x86_64"
    )
    assert qemu.describe_qemu("lab", X86).startswith(
        f"the lab's build of qemu {qemu.VERSION} with 0001-"
    )


def test_each_arch_has_its_own_target_and_key_and_x86_s_is_as_before(monkeypatch):
    monkeypatch.setattr(qemu, "compiler_identity", lambda: "gcc 12")
    assert qemu.configure_args(X86)[0] == "--target-list=x86_64-softmmu"
    assert qemu.configure_args(ARM)[0] == "--target-list=aarch64-softmmu"
    assert qemu.qemu_key(X86) != qemu.qemu_key(ARM)
    # The inputs of the x86_64-only build before the split, in order: its cache entry holds.
    before = ["lab-qemu", qemu.VERSION, tree_digest(qemu.PATCHES), "--target-list=x86_64-softmmu"]
    assert qemu.qemu_key(X86) == content_key([*before, *qemu.CONFIGURE, "gcc 12"])


@pytest.fixture
def fake_build(monkeypatch, tmp_path):
    """The build's steps recorded instead of run; `ninja` leaves the binary it was asked for."""
    commands: list[list[str]] = []
    src = tmp_path / "src"

    def run_logged(argv, **kwargs):
        commands.append([str(a) for a in argv])
        if argv[0] == "ninja":
            (src / "build").mkdir(parents=True, exist_ok=True)
            (src / "build" / str(argv[-1])).write_text("ELF")

    monkeypatch.setattr(qemu, "compiler_identity", lambda: "gcc 12")
    monkeypatch.setattr(qemu, "missing_build_depends", lambda: [])
    monkeypatch.setattr(qemu, "_fresh_source", lambda *a: src)
    monkeypatch.setattr(qemu, "apply_patches", lambda *a: None)
    monkeypatch.setattr(qemu, "run_logged", run_logged)
    monkeypatch.setattr(qemu, "qemu_version", lambda binary: "10.0.13")
    return commands


def test_an_arch_s_build_makes_its_own_emulator_only(fake_build, tmp_path):
    cache = Cache(tmp_path / "cache")
    assert qemu.built_info(ARM, cache) is None
    built = qemu.ensure_lab_qemu(ARM, cache)
    configure, ninja = fake_build
    assert "--target-list=aarch64-softmmu" in configure and configure[0] == "./configure"
    assert ninja[0] == "ninja" and ninja[-1] == "qemu-system-aarch64"
    assert Path(built.binary) == cache.entry("qemu", qemu.qemu_key(ARM)) / "qemu-system-aarch64"
    assert (built.version, built.patches) == ("10.0.13", tuple(qemu.series()))
    assert built.build_s is not None
    # What an aarch64 user built is not an x86_64 user's: the doctor tells them apart.
    assert qemu.built_info(ARM, cache) == ("10.0.13", tuple(qemu.series()))
    assert qemu.built_info(X86, cache) is None
    arm, x86 = doctor.check_lab_qemu(cache, ARM), doctor.check_lab_qemu(cache, X86)
    assert (arm.name, arm.ok) == ("lab qemu-system-aarch64", True)
    assert arm.detail.startswith("built: 10.0.13 with 0001-")
    assert x86.name == "lab qemu-system-x86_64" and x86.detail.startswith("not built yet")
    assert qemu.ensure_lab_qemu(ARM, cache).build_s is None  # cached: not built again
    assert len(fake_build) == 2
