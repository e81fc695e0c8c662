from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from lab.artifacts.kernels import KernelArtifact
from lab.artifacts.keys import LabKeys
from lab.artifacts.qemu import QemuBinary
from lab.artifacts.rootfs import RootfsImage
from lab.core.errors import InfraError
from lab.model.scenario import expand, load
from lab.results import history
from lab.run.booter import Prepared
from lab.run.cell import identity
from lab.run.provenance import GuestFacts, mismatches, parse_facts
from lab.vm.accel import GuestCpu


def artifact(tmp_path, release="7.2.13-vfio-lab", config=b"CONFIG_IOMMUFD=y\n") -> KernelArtifact:
    (tmp_path / "config").write_bytes(config)
    return KernelArtifact(
        "debian:7.2",
        release,
        "linux-source-7.2=7.2.13-1",
        tmp_path / "vmlinuz",
        tmp_path / "i",
        "x",
    )


def test_parse_facts():
    assert parse_facts("6.1.0-56-amd64\n-\nvfio\n") == GuestFacts("6.1.0-56-amd64", None, "vfio")
    assert parse_facts("7.2.13\nabc\niommufd\n").config_sha256 == "abc"
    with pytest.raises(InfraError, match="unexpected answer"):
        parse_facts("7.2.13\n")


def test_matching_guest_has_no_mismatch(tmp_path):
    kernel = artifact(tmp_path)
    sha = hashlib.sha256(b"CONFIG_IOMMUFD=y\n").hexdigest()
    assert mismatches(GuestFacts("7.2.13-vfio-lab", sha, "iommufd"), kernel) == []
    assert mismatches(GuestFacts("7.2.13-vfio-lab", None, "vfio"), kernel) == []  # no IKCONFIG


def test_wrong_kernel_or_config_is_named(tmp_path):
    kernel = artifact(tmp_path)
    wrong = mismatches(GuestFacts("6.1.0-56-amd64", "0" * 64, "vfio"), kernel)
    assert wrong == [
        "the guest runs 6.1.0-56-amd64, not the cell's kernel 7.2.13-vfio-lab",
        "the guest's /proc/config.gz differs from the config the cell built",
    ]


def test_a_cells_identity_names_each_component_and_moves_only_the_one_changed(tmp_path):
    """What history compares night to night, as the host records it per cell."""
    path = tmp_path / "s.yaml"
    path.write_text("kernels: [debian:7.2]\nfragments: [iommufd]\n")
    (cell,) = expand(load(path))
    (tmp_path / "base.qcow2").write_bytes(b"image")
    keys = LabKeys(tmp_path / "k", tmp_path / "h")
    prepared = Prepared(keys, RootfsImage(tmp_path / "base.qcow2", "r1"), artifact(tmp_path),
                        QemuBinary("qemu-system-x86_64", "system", "7.2.22"), "tcg",
                        GuestCpu("tcg"))  # fmt: skip
    first = identity(cell, prepared, [])
    assert tuple(first) == history.COMPONENTS
    assert first["kernel"] == "linux-source-7.2=7.2.13-1"

    def changed(other: dict[str, str]) -> list[str]:
        return history.differences(first, other)[0]

    assert changed(identity(cell, prepared, [])) == []
    assert changed(identity(cell, prepared, ["-k", "dma"])) == ["payload"]
    assert changed(identity(cell, replace(prepared, accel="kvm"), [])) == ["machine"]
    rebuilt = replace(prepared, image=RootfsImage(tmp_path / "base.qcow2", "r2"))
    assert changed(identity(cell, rebuilt, [])) == ["rootfs"]
    path.write_text("kernels: [debian:7.2]\nfragments: [iommufd, debug]\n")
    assert changed(identity(expand(load(path))[0], prepared, [])) == ["config"]
    path.write_text(
        "kernels: [debian:7.2]\nfragments: [iommufd]\npayload: {suites: [lab, kselftest-iommu]}\n"
    )
    assert changed(identity(expand(load(path))[0], prepared, [])) == ["suites"]
    path.write_text("kernels: [debian:7.2]\nfragments: [iommufd]\nmachine: {qemu: lab}\n")
    assert changed(identity(expand(load(path))[0], prepared, [])) == ["qemu"]
