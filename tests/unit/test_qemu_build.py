"""The lab's QEMU build, without building: its recipe and what the host setup installs."""

from __future__ import annotations

from lab.artifacts import qemu
from lab.model.arches import ARCHES
from tests.conftest import REPO

X86 = ARCHES["x86_64"]


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
