"""The IOPTE size backing an IOVA, from intel-iommu's debugfs page-table dump.

Each leaf of `domain_translation_struct` is a row `0xPFN | PML5E PML4E PDPE [PDE [PTE]]`
(drivers/iommu/intel/debugfs.c, dump_page_info): the number of entries after `|`
tells the level the walk ended at, so 3 is a 1 GiB page, 4 a 2 MiB page, 5 a 4 KiB page.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import pytest

from vfiolib import kconfig

DEBUGFS = "/sys/kernel/debug/iommu/intel"
SYSFS = "/sys/class/iommu"
# The lab's IOMMU models (lab.model.variants) by how their drivers name the IOMMU under
# /sys/class/iommu: intel-iommu dmar%d, arm-smmu-v3 smmu3.%pa (its MMIO base),
# virtio-iommu the name of its virtio device (virtio%d).
MODEL_BY_PREFIX = {"dmar": "intel-iommu", "smmu3.": "smmuv3", "virtio": "virtio-iommu"}
_ROW = re.compile(r"^\s*0x([0-9a-fA-F]+)\s*\|\s*(.*)$")
LEAF_SIZE = {3: 1 << 30, 4: 2 << 20, 5: 4 << 10}


def dump_path(bdf: str) -> str | None:
    for path in (
        f"{DEBUGFS}/{bdf}/domain_translation_struct",
        f"{DEBUGFS}/domain_translation_struct",
    ):
        if os.path.exists(path):
            return path
    return None


def readable() -> bool:
    """Whether IOPTEs can be read here: intel-iommu's debugfs is there. Where intel-iommu
    runs and the config promises the debugfs (CONFIG_INTEL_IOMMU_DEBUGFS), its absence is
    a failure, not a quiet loss of every IOPTE check; elsewhere (another IOMMU model, a
    kernel without it) the checks are left out and the sizes recorded as unknown."""
    if os.path.isdir(DEBUGFS):
        return True
    intel = "intel-iommu" in guest_models()
    if intel and kconfig.promising("CONFIG_INTEL_IOMMU_DEBUGFS"):
        pytest.fail(f"CONFIG_INTEL_IOMMU_DEBUGFS=y promises {DEBUGFS}, but it is absent")
    return False


def models(names: Iterable[str]) -> list[str]:
    """The IOMMU models behind these /sys/class/iommu names, sorted; a name of no model
    the lab knows stands for itself."""
    return sorted(
        {next((m for p, m in MODEL_BY_PREFIX.items() if n.startswith(p)), n) for n in names}
    )


def guest_models() -> list[str]:
    return models(os.listdir(SYSFS) if os.path.isdir(SYSFS) else [])


def recorded(size: int | None) -> str | None:
    """What a test records as its `iopte_size` for what iopte_size() found: the size
    where the dump is readable; why it is unknown behind another IOMMU than intel-iommu;
    None behind intel-iommu without its debugfs (CONFIG_INTEL_IOMMU_DEBUGFS not set),
    where each test records what it always did."""
    if readable():
        return human(size)
    found = guest_models()
    if "intel-iommu" in found:
        return None
    return (
        "unknown (only intel-iommu's debugfs shows IOPTEs; "
        f"this guest's IOMMU is {' and '.join(found) or 'none'})"
    )


def leaf_size(lines: Iterable[str], iova: int) -> int | None:
    """The size of the IOPTE mapping `iova` in a domain_translation_struct dump, read only
    as far as that row."""
    for line in lines:
        m = _ROW.match(line)
        if not m:
            continue
        size = LEAF_SIZE.get(len(m.group(2).split()))
        start = int(m.group(1), 16) << 12
        if size is not None and start <= iova < start + size:
            return size
    return None


def iopte_size(bdf: str, iova: int) -> int | None:
    path = dump_path(bdf)
    if path is None:
        return None
    # The kernel writes the dump as it is read (seq_file): reading on only to the row
    # wanted, as upstream's intel_iommu_mapping_get does, spares formatting the rest. A
    # 1 GiB buffer mapped with 4 KiB IOPTEs is 262,144 rows.
    with open(path) as f:
        return leaf_size(f, iova)


def human(size: int | None) -> str:
    if size is None:
        return "none"
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)
