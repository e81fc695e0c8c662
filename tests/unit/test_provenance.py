from __future__ import annotations

import hashlib

import pytest

from lab.build.kernels import KernelArtifact
from lab.core.errors import InfraError
from lab.run.provenance import GuestFacts, mismatches, parse_facts


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
