"""`vfio-lab doctor`'s checks of what aarch64 guests need of the host, on fake tools: a
warning unless the scenario has aarch64 cells, each naming its package and the setup
option that installs them all."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.artifacts import kbuild
from lab.artifacts.userns import with_sudo
from lab.cli import doctor, main
from lab.core.versions import version_text

QEMU_7_2 = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)"
GCC = "aarch64-linux-gnu-gcc (Debian 12.2.0-14) 12.2.0"
SETUP = with_sudo("scripts/setup-host.sh --arm64")


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A PATH of fake tools only, empty until `install(name, first line of --version)`;
    what is asked once per process is asked again."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    forget = (version_text.cache_clear, kbuild.compiler_identity.cache_clear)
    for clear in forget:
        clear()

    def install(name: str, version: str) -> None:
        (bin_dir / name).write_text(f"#!/bin/sh\necho '{version}'\n")
        (bin_dir / name).chmod(0o755)

    yield install
    for clear in forget:
        clear()


def by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


def test_missing_aarch64_tools_are_a_warning_naming_their_package_and_setup(tools) -> None:
    checks = doctor.guest_arch_checks(["x86_64"])
    qemu, gcc = by_name(checks)["qemu-system-aarch64"], by_name(checks)["aarch64-linux-gnu-gcc"]
    assert not qemu.ok and not qemu.needed and not gcc.ok and not gcc.needed
    for check, package in ((qemu, "qemu-system-arm"), (gcc, "gcc-aarch64-linux-gnu")):
        assert check.detail == "not found (for aarch64 guests)"
        assert check.fix.startswith(f"{SETUP} (or this alone: ")
        assert "apt-get install" in check.fix and check.fix.endswith(f" {package})")
    assert doctor.healthy(checks)
    report = doctor.report(checks).splitlines()
    assert report[0].startswith("WARN    qemu-system-aarch64  ")
    assert report[1].strip().startswith(f"fix: {SETUP}")


def test_a_scenario_with_aarch64_cells_needs_them(tools) -> None:
    checks = doctor.guest_arch_checks(["x86_64", "aarch64"])
    assert [c.needed for c in checks] == [True, True] and not doctor.healthy(checks)
    assert doctor.report(checks).startswith("MISSING qemu-system-aarch64")


def test_present_aarch64_tools_show_their_versions(tools) -> None:
    tools("qemu-system-aarch64", QEMU_7_2)
    tools("aarch64-linux-gnu-gcc", GCC)
    checks = by_name(doctor.guest_arch_checks(["aarch64"]))
    assert checks["qemu-system-aarch64"].ok and checks["aarch64-linux-gnu-gcc"].ok
    assert checks["qemu-system-aarch64"].detail == f"{QEMU_7_2} (for aarch64 guests)"
    assert checks["aarch64-linux-gnu-gcc"].detail == f"{GCC} (for aarch64 guests)"


def test_an_aarch64_qemu_older_than_7_2_is_not_enough(tools) -> None:
    tools("qemu-system-aarch64", "QEMU emulator version 6.2.0 (Debian 1:6.2+dfsg-2)")
    qemu = by_name(doctor.guest_arch_checks(["aarch64"]))["qemu-system-aarch64"]
    assert not qemu.ok and "qemu-system-arm" in qemu.fix


def test_doctor_fails_on_them_only_for_a_scenario_with_aarch64_cells(
    tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VFIO_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(doctor, "host_checks", lambda cache: [doctor.Check("host", True, "")])
    assert main(["doctor"]) == 0  # the built-in `quick`: x86_64 only
    assert "WARN    qemu-system-aarch64" in capsys.readouterr().out
    arm = tmp_path / "arm.yaml"
    arm.write_text("machine: {arch: [x86_64, aarch64]}\n")
    assert main(["doctor", str(arm)]) == 3
    out = capsys.readouterr().out
    assert "MISSING qemu-system-aarch64" in out and "MISSING aarch64-linux-gnu-gcc" in out
    tools("qemu-system-aarch64", QEMU_7_2)
    tools("aarch64-linux-gnu-gcc", GCC)
    assert main(["doctor", str(arm)]) == 0


def test_a_bad_scenario_given_to_doctor_is_exit_2_naming_its_line_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VFIO_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(doctor, "host_checks", pytest.fail)  # refused before any check
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmachine: {arch: sparc}\n")
    assert main(["doctor", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"vfio-lab: error: {bad}:2: machine.arch: unknown architecture 'sparc'; "
        "available: aarch64, x86_64"
    )
