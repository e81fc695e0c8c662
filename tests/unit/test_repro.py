"""repro's reading of a cell's provenance and its drift report, without booting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.artifacts.kernels import KernelArtifact
from lab.artifacts.keys import LabKeys
from lab.artifacts.qemu import QemuBinary
from lab.artifacts.rootfs import RootfsImage
from lab.core.cache import file_sha256, tree_digest
from lab.core.errors import UsageError
from lab.model.scenario import DEFAULT_PAYLOAD, DEFAULT_SCENARIO
from lab.run import repro
from lab.run.booter import Prepared
from lab.run.payload import RUNTIME_DIR
from lab.vm.accel import GuestCpu


def write_cell(tmp_path: Path, **kernel: object) -> tuple[Path, Prepared]:
    cell = tmp_path / "run" / "debian-stock"
    cell.mkdir(parents=True)
    (tmp_path / "run" / "scenario.yaml").write_text(DEFAULT_SCENARIO.read_text())
    vmlinuz, initramfs = tmp_path / "vmlinuz", tmp_path / "initramfs.cpio"
    vmlinuz.write_bytes(b"kernel")
    initramfs.write_bytes(b"cpio")
    record = {
        "cell": "debian-stock",
        "scenario_file": str(DEFAULT_SCENARIO),
        "scenario_snapshot": "../scenario.yaml",
        "kernel": {
            "spec": "debian-stock",
            "resolved_spec": "debian-stock:linux-image-6.1.0-56-amd64=6.1.192-2",
            "identity": "linux-image-6.1.0-56-amd64=6.1.192-2",
            "release": "6.1.0-56-amd64",
            "vmlinuz_sha256": file_sha256(vmlinuz),
            "initramfs_sha256": file_sha256(initramfs),
        }
        | kernel,
        "rootfs_key": "abc",
        "payload": {
            "tests": str(DEFAULT_PAYLOAD),
            "tests_digest": tree_digest(DEFAULT_PAYLOAD),
            "runtime_digest": tree_digest(RUNTIME_DIR),
        },
        "pytest_args": ["-k", "dma"],
        "accelerator": "tcg",
        "qemu": {
            "choice": "system",
            "binary": "qemu-system-x86_64",
            "version": "7.2.22",
            "patches": [],
        },
    }
    (cell / "provenance.json").write_text(json.dumps(record))
    artifact = KernelArtifact(
        "debian-stock", "6.1.0-56-amd64", "x", vmlinuz, initramfs, file_sha256(vmlinuz)
    )
    keys = LabKeys(tmp_path / "k", tmp_path / "h")
    qemu = QemuBinary("qemu-system-x86_64", "system", "7.2.22")
    image = RootfsImage(tmp_path / "base.qcow2", "abc")
    return cell, Prepared(keys, image, artifact, qemu, "tcg", GuestCpu("tcg"))


def test_plan_pins_the_kernel_and_keeps_the_arguments(tmp_path):
    cell_dir, _ = write_cell(tmp_path)
    p = repro.plan(cell_dir, "memcpy")
    assert p.cell.name == "debian-stock"
    assert p.cell.kernel.arg == "linux-image-6.1.0-56-amd64=6.1.192-2"
    assert p.pytest_args == ["-k", "dma", "-k", "memcpy"]
    assert p.cell.scenario.payload.args == []
    assert p.notes == []


def test_nothing_drifted(tmp_path):
    cell_dir, prepared = write_cell(tmp_path)
    p = repro.plan(cell_dir, None)
    assert repro.drift(p.record, prepared, DEFAULT_PAYLOAD) == []


def test_drift_says_what_changed_and_why(tmp_path):
    cell_dir, prepared = write_cell(tmp_path, vmlinuz_sha256="0" * 64)
    record = repro.read_provenance(cell_dir)
    record["rootfs_key"] = "old"
    notes = repro.drift(record, prepared, DEFAULT_PAYLOAD)
    assert any(
        "kernel image differs" in n and "archive now serves a different build" in n for n in notes
    )
    assert any("root filesystem differs (key old -> abc)" in n for n in notes)


def test_drift_names_a_different_qemu(tmp_path):
    cell_dir, prepared = write_cell(tmp_path)
    record = repro.read_provenance(cell_dir)
    record["qemu"] |= {"choice": "lab", "version": "10.0.13", "patches": ["0001-edu.patch"]}
    notes = repro.drift(record, prepared, DEFAULT_PAYLOAD)
    assert notes == [
        "QEMU differs: 10.0.13 with ['0001-edu.patch'] -> 7.2.22 with no patches (machine.qemu: lab)"
    ]


def test_missing_scenario_file_falls_back_to_the_snapshot(tmp_path):
    cell_dir, _ = write_cell(tmp_path)
    record = json.loads((cell_dir / "provenance.json").read_text())
    record["scenario_file"] = str(tmp_path / "gone.yaml")
    (cell_dir / "provenance.json").write_text(json.dumps(record))
    p = repro.plan(cell_dir, None)
    assert p.scenario_file == (tmp_path / "run" / "scenario.yaml").resolve()
    assert "using the run's snapshot" in p.notes[0]


def test_corrupt_provenance_is_a_usage_error(tmp_path):
    cell_dir, _ = write_cell(tmp_path)
    (cell_dir / "provenance.json").write_text("{not json")
    with pytest.raises(UsageError, match="is corrupt"):
        repro.plan(cell_dir, None)


@pytest.mark.parametrize("drop", ["accelerator", "payload", "rootfs_key"])
def test_provenance_missing_a_field_is_named(tmp_path, drop):
    cell_dir, _ = write_cell(tmp_path)
    record = json.loads((cell_dir / "provenance.json").read_text())
    del record[drop]
    (cell_dir / "provenance.json").write_text(json.dumps(record))
    with pytest.raises(UsageError, match=rf"is corrupt \(missing {drop}\b"):
        repro.plan(cell_dir, None)


def test_a_corrupt_recorded_argv_is_a_usage_error(tmp_path):
    cell_dir, _ = write_cell(tmp_path)
    (cell_dir / "qemu-argv.json").write_text("[qemu")
    with pytest.raises(UsageError, match=r"qemu-argv\.json is unreadable or not JSON"):
        repro.recorded_argv(cell_dir)


def patched_cell(tmp_path: Path) -> tuple[Path, Path]:
    patch = tmp_path / "fix.patch"
    patch.write_text("the run's patch\n")
    cell_dir, _ = write_cell(
        tmp_path,
        resolved_spec="debian:7.2=7.2.13-1",
        patches=[
            {"file": str(patch), "sha256": file_sha256(patch), "copy": "patches/01-fix.patch"}
        ],
    )
    (cell_dir / "patches").mkdir()
    (cell_dir / "patches" / "01-fix.patch").write_text(patch.read_text())
    return cell_dir, patch


def test_plan_applies_the_recorded_kernel_patches(tmp_path):
    cell_dir, patch = patched_cell(tmp_path)
    p = repro.plan(cell_dir, None)
    assert p.cell.kernel.patches == (patch,)
    assert p.notes == []


def test_a_changed_patch_is_replaced_by_the_runs_copy(tmp_path):
    cell_dir, patch = patched_cell(tmp_path)
    patch.write_text("edited since\n")
    p = repro.plan(cell_dir, None)
    assert p.cell.kernel.patches == (cell_dir / "patches" / "01-fix.patch",)
    assert any("using the run's copy" in n for n in p.notes)


def test_a_patch_lost_with_its_copy_is_a_usage_error(tmp_path):
    cell_dir, patch = patched_cell(tmp_path)
    patch.unlink()
    (cell_dir / "patches" / "01-fix.patch").unlink()
    with pytest.raises(UsageError, match="and so is its copy"):
        repro.plan(cell_dir, None)


def test_plan_restores_the_machine_the_cell_ran(tmp_path):
    """A virtio-iommu or aarch64 cell is repeated as it ran, not on the defaults."""
    cell_dir, _ = write_cell(tmp_path)
    record = json.loads((cell_dir / "provenance.json").read_text())
    (cell_dir / "provenance.json").write_text(json.dumps(record | {"iommu": "virtio-iommu"}))
    assert repro.plan(cell_dir, None).cell.iommu == "virtio-iommu"
    (cell_dir / "provenance.json").write_text(
        json.dumps(record | {"arch": "aarch64", "iommu": "smmuv3"})
    )
    cell = repro.plan(cell_dir, None).cell
    assert (cell.arch, cell.iommu) == ("aarch64", "smmuv3")
    # A record from before they were kept names neither: the defaults, as then.
    (cell_dir / "provenance.json").write_text(json.dumps(record))
    cell = repro.plan(cell_dir, None).cell
    assert (cell.arch, cell.iommu) == ("x86_64", "intel-iommu")
    (cell_dir / "provenance.json").write_text(json.dumps(record | {"arch": "arm64"}))
    with pytest.raises(UsageError, match=r"is corrupt \(arch 'arm64'\)"):
        repro.plan(cell_dir, None)
