"""The guest's reader of intel-iommu's page-table dump (format of drivers/iommu/intel/debugfs.c)."""

from __future__ import annotations

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
