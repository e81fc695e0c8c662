"""The guest's reader of intel-iommu's page-table dump (format of drivers/iommu/intel/debugfs.c),
and what a test records where there is none."""

from __future__ import annotations

import pytest

from vfiolib import iopte
from vfiolib.iopte import human, leaf_size

DUMP = """\
Device 0000:00:03.0 @0x10a8c5000
IOVA_PFN\t\tPML5E\t\t\tPML4E\t\t\tPDPE\t\t\tPDE\t\t\tPTE
0x0000000000100 |\t0x0000000000000000\t0x000000010a8c6003\t0x000000010a8c7003\t0x000000010a8c8003\t0x0000000105f2b003
0x0000000000200 |\t0x0000000000000000\t0x000000010a8c6003\t0x000000010a8c7003\t0x0000000106400083
0x0000000040000 |\t0x0000000000000000\t0x000000010a8c6003\t0x0000000140000083
"""


def test_leaf_levels_give_iopte_sizes():
    assert leaf_size(DUMP.splitlines(), 0x100000) == 4 << 10
    assert leaf_size(DUMP.splitlines(), 0x200000 + 0x1234) == 2 << 20
    assert leaf_size(DUMP.splitlines(), (1 << 30) + (512 << 20)) == 1 << 30


def test_unmapped_iova_and_garbage():
    assert leaf_size(DUMP.splitlines(), 0x5000) is None
    assert leaf_size(["garbage", "0xzz | 1 2 3"], 0) is None


def test_human():
    assert [human(4096), human(2 << 20), human(1 << 30), human(None)] == ["4K", "2M", "1G", "none"]


def test_iommu_models_from_their_sysfs_names():
    # Names as the drivers make them: dmar%d, smmu3.%pa, the virtio device's name.
    assert iopte.models(["dmar0", "dmar1"]) == ["intel-iommu"]
    assert iopte.models(["smmu3.0x0000000009050000"]) == ["smmuv3"]
    assert iopte.models(["virtio1"]) == ["virtio-iommu"]
    assert iopte.models(["ivhd0"]) == ["ivhd0"], "a driver the lab has no model of names itself"
    assert iopte.models([]) == []


@pytest.fixture
def guest(tmp_path, monkeypatch):
    """A guest without intel-iommu's debugfs whose /sys/class/iommu holds `names`."""

    def make(*names: str) -> None:
        for name in names:
            (tmp_path / "class" / name).mkdir(parents=True)
        monkeypatch.setattr(iopte, "SYSFS", str(tmp_path / "class"))
        monkeypatch.setattr(iopte, "DEBUGFS", str(tmp_path / "no-debugfs"))
        monkeypatch.setattr(iopte.kconfig, "promising", lambda *options: None)

    return make


@pytest.mark.parametrize(
    ("name", "model"), [("smmu3.0x0000000009050000", "smmuv3"), ("virtio0", "virtio-iommu")]
)
def test_another_iommu_records_why_the_size_is_unknown(guest, name, model):
    guest(name)
    assert iopte.recorded(None) == (
        f"unknown (only intel-iommu's debugfs shows IOPTEs; this guest's IOMMU is {model})"
    )


def test_no_iommu_at_all_is_named_too(guest):
    guest()
    assert iopte.recorded(None).endswith("this guest's IOMMU is none)")


def test_intel_iommu_without_its_debugfs_leaves_the_record_to_the_test(guest):
    guest("dmar0")
    assert iopte.recorded(None) is None


def test_a_readable_dump_records_the_size(guest, tmp_path, monkeypatch):
    guest("dmar0")
    (tmp_path / "debugfs").mkdir()
    monkeypatch.setattr(iopte, "DEBUGFS", str(tmp_path / "debugfs"))
    assert iopte.recorded(2 << 20) == "2M"
    assert iopte.recorded(None) == "none"


def test_intel_iommu_whose_config_promises_the_debugfs_fails_without_it(guest, monkeypatch):
    guest("dmar0")
    monkeypatch.setattr(iopte.kconfig, "promising", lambda *options: options[0])
    with pytest.raises(pytest.fail.Exception, match="CONFIG_INTEL_IOMMU_DEBUGFS=y promises"):
        iopte.recorded(None)
