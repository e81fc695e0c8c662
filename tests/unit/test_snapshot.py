"""Snapshots without QEMU: the key, the command lines, the QMP conversation with a fake
monitor, and the guest's config-space replay on a fake sysfs."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path

import pytest
from qemu.qmp import QMPError

from lab.artifacts.kernels import KernelArtifact
from lab.artifacts.keys import LabKeys
from lab.artifacts.qemu import QemuBinary
from lab.artifacts.rootfs import RootfsImage
from lab.core.data import GUEST_TESTS
from lab.model import scenario
from lab.run.booter import Prepared, snapshot_key
from lab.vm import snapshot
from lab.vm.accel import GuestCpu
from lab.vm.qemu import build_argv
from tests.unit.test_qemu_argv import config

QUICK = Path(__file__).resolve().parents[2] / "scenarios" / "quick.yaml"


def prepared(tmp_path: Path, version: str = "7.2.22") -> Prepared:
    qemu_bin = tmp_path / "qemu-system-x86_64"
    if not qemu_bin.exists():
        qemu_bin.write_text("#!/bin/sh\n")
    k = tmp_path / "k"
    artifact = KernelArtifact("debian-stock", "6.1", "x", k / "vmlinuz", k / "initrd", "aa")
    keys = LabKeys(tmp_path / "c", tmp_path / "h")
    qemu = QemuBinary(str(qemu_bin), "system", version)
    (tmp_path / "base.qcow2").touch()
    image = RootfsImage(tmp_path / "base.qcow2", "rootfs1")
    return Prepared(keys, image, artifact, qemu, "tcg", GuestCpu("tcg"))


def cell(**machine: object) -> scenario.Cell:
    s = scenario.load(QUICK)
    if machine:
        s = dataclasses.replace(s, machine=dataclasses.replace(s.machine, **machine))
    return scenario.expand(s)[0]


def test_the_key_names_the_machine_not_the_boot(tmp_path: Path) -> None:
    p = prepared(tmp_path)
    key = snapshot_key(cell(), p, bind=True)
    assert snapshot_key(cell(), p, bind=True) == key, "ports and paths are not in the key"
    assert snapshot_key(cell(), p, bind=False) != key
    assert snapshot_key(cell(memory=2 << 30), p, bind=True) != key
    assert snapshot_key(cell(), prepared(tmp_path, "10.0.13"), bind=True) != key
    assert snapshot_key(cell(), dataclasses.replace(p, accel="kvm"), bind=True) != key
    other = tmp_path / "other.qcow2"
    other.write_text("another base")
    assert snapshot_key(cell(), dataclasses.replace(p, image=RootfsImage(other, "2")), True) != key


def test_a_rebuilt_root_filesystem_changes_the_key(tmp_path: Path) -> None:
    p = prepared(tmp_path)
    key = snapshot_key(cell(), p, bind=True)
    p.image.base.write_text("debootstrapped again from a newer mirror")
    assert snapshot_key(cell(), p, bind=True) != key


def test_a_rebuilt_qemu_binary_changes_the_key(tmp_path: Path) -> None:
    p = prepared(tmp_path)
    key = snapshot_key(cell(), p, bind=True)
    Path(p.qemu.binary).write_text("#!/bin/sh\n# rebuilt\n")
    assert snapshot_key(cell(), p, bind=True) != key


def test_restore_appends_to_the_console_and_loads_from_the_descriptor() -> None:
    argv = snapshot.restore_argv(build_argv(config(console_append=True)), 7)
    assert argv[-2:] == ["-incoming", "fd:7"]
    assert argv[argv.index("-chardev") + 1].endswith(",append=on")
    assert not build_argv(config())[build_argv(config()).index("-chardev") + 1].endswith("on")


class FakeMachine:
    """Answers QMP like QEMU does for a migration into a file."""

    def __init__(self, statuses: list[dict[str, object]], refuse: str | None = None) -> None:
        self.statuses = statuses
        self.refuse = refuse
        self.sent: list[tuple[str, dict[str, object]]] = []

    def query(self, command: str, **args: object) -> object:
        self.sent.append((command, args))
        if command == "migrate" and self.refuse:
            raise QMPError(self.refuse)
        if command == "query-migrate":
            return self.statuses.pop(0)
        return {}

    def send_fd(self, fd: int, name: str) -> None:
        self.sent.append(("getfd", {"fdname": name}))


def test_save_stops_hands_over_the_file_and_waits_for_completion(tmp_path: Path) -> None:
    m = FakeMachine([{"status": "active"}, {"status": "completed"}])
    snapshot.save(m, tmp_path / "state", timeout=5)  # type: ignore[arg-type]
    assert [c for c, _ in m.sent] == [
        "stop", "getfd", "migrate-set-parameters", "migrate", "query-migrate", "query-migrate",
    ]  # fmt: skip
    assert ("migrate", {"uri": "fd:vfio-lab-snapshot"}) in m.sent


def test_a_machine_that_cannot_migrate_runs_on_and_says_why(tmp_path: Path) -> None:
    m = FakeMachine([], refuse="State blocked by non-migratable device 'amd-iommu'")
    with pytest.raises(snapshot.SnapshotFailed, match="non-migratable device 'amd-iommu'") as e:
        snapshot.save(m, tmp_path / "state", timeout=5)  # type: ignore[arg-type]
    assert m.sent[-1][0] == "cont"
    assert e.value.permanent, "QEMU refuses this machine every time"


def test_a_migration_that_takes_too_long_is_cancelled_and_may_work_next_time(
    tmp_path: Path,
) -> None:
    m = FakeMachine([{"status": "active"}] * 1000)
    with pytest.raises(snapshot.SnapshotFailed, match="still active") as e:
        snapshot.save(m, tmp_path / "state", timeout=0.05)  # type: ignore[arg-type]
    assert [c for c, _ in m.sent][-2:] == ["migrate_cancel", "cont"]
    assert not e.value.permanent


def test_a_failed_migration_is_reported_with_qemus_words(tmp_path: Path) -> None:
    m = FakeMachine([{"status": "failed", "error-desc": "No space left on device"}])
    with pytest.raises(snapshot.SnapshotFailed, match="No space left") as e:
        snapshot.save(m, tmp_path / "state", timeout=5)  # type: ignore[arg-type]
    assert not e.value.permanent


@pytest.fixture
def lab_guest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(GUEST_TESTS))
    module = importlib.import_module("lab_guest")
    sysfs = tmp_path / "sys"
    monkeypatch.setattr(module.pci, "SYSFS", str(sysfs))
    monkeypatch.setattr(module, "SAVED_CONFIG", str(tmp_path / "saved"))
    yield module, sysfs
    sys.modules.pop("lab_guest", None)


def header(bar0: int, command: int, header_type: int = 0) -> bytearray:
    h = bytearray(0x40)
    h[0:4] = bytes.fromhex("34 12 e8 11")  # edu, 1234:11e8
    h[0x04:0x06] = command.to_bytes(2, "little")
    h[0x0E] = header_type
    h[0x10:0x14] = bar0.to_bytes(4, "little")
    return h


def test_the_guest_writes_back_only_the_headers_qemu_lost(lab_guest, tmp_path: Path) -> None:
    module, sysfs = lab_guest
    for bdf, h in {
        "0000:01:00.0": header(0xFEA00000, 0x0406),  # edu: no vmstate
        "0000:00:02.0": header(0xFEB00000, 0x0007),  # virtio: migrated
        "0000:00:01.0": header(0, 0x0007, header_type=1),  # a root port: not an endpoint
    }.items():
        (sysfs / bdf).mkdir(parents=True)
        (sysfs / bdf / "config").write_bytes(bytes(h))
    module.snapshot_save()
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
        "0000:00:02.0", "0000:01:00.0",
    ]  # fmt: skip
    # What a restore into a fresh QEMU gives edu: its power-on header.
    (sysfs / "0000:01:00.0" / "config").write_bytes(bytes(header(0, 0)))
    assert [b for b in module._endpoints() if module._rewrite_header(b)] == ["0000:01:00.0"]
    restored = (sysfs / "0000:01:00.0" / "config").read_bytes()
    assert restored[0x10:0x14] == (0xFEA00000).to_bytes(4, "little")
    assert restored[0x04:0x06] == (0x0406).to_bytes(2, "little")
