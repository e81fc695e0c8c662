"""Launch failures carry the exit code, the argv and the QEMU log tail (a fake QEMU binary)."""

from __future__ import annotations

import pytest

from lab.errors import LaunchError
from lab.machine import Machine
from lab.qemu import VMConfig


def fake_qemu(tmp_path, body: str):
    path = tmp_path / "fake-qemu"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def config(tmp_path, qemu) -> VMConfig:
    return VMConfig(
        name="vfio-lab:test",
        accel="tcg",
        kernel=tmp_path / "vmlinuz",
        initrd=tmp_path / "initrd",
        disk=tmp_path / "disk.qcow2",
        console_log=tmp_path / "console.log",
        qmp_socket=tmp_path / "qmp.sock",
        ssh_port=1,
        qemu=str(qemu),
    )


def test_qemu_dying_at_start_raises_launch_error(tmp_path):
    qemu = fake_qemu(
        tmp_path, "echo \"qemu-system-x86_64: -device edu: Bus 'pcie.0' is full\" >&2; exit 1"
    )
    (tmp_path / "k").write_text("")
    keys = tmp_path / "k"
    pub = tmp_path / "host.pub"
    pub.write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHr3vZ3R1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a vfio-lab\n"
    )
    with (
        pytest.raises(LaunchError) as info,
        Machine(config(tmp_path, qemu), keys, pub, tmp_path / "qemu.log"),
    ):
        pass
    e = info.value
    assert e.exitcode == 1
    assert e.argv[0] == str(qemu)
    assert any("Bus 'pcie.0' is full" in line for line in e.log_tail)
    assert "exit code 1" in str(e)
    assert not (tmp_path / "qmp.sock").exists()
