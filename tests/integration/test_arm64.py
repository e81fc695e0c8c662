"""An aarch64 guest behind QEMU's emulated SMMUv3, for real, under TCG on an x86_64 host.

The smallest setup that proves the point: Debian's stock arm64 kernel (6.1, fetched, no
build; VFIO's own type1 container, no iommufd), Debian's qemu-system-aarch64 (`make test`
installs it), the aarch64 root filesystem (built once for the suite, its second stage a
boot under TCG; test_foreign_rootfs checks that image), edu bound to vfio-pci, and
upstream's memcpy_success: edu copies RAM to RAM through the SMMUv3 and signals the end
with an MSI through the GICv3 ITS, in both type1 modes.

Debian's 6.1 puts edu in its root port's IOMMU group, and the root port's hotplug MSI
faults once VFIO attaches the group (an "iommu fault" shown with the first test, not an
error: some tests provoke faults on purpose). 7.2 gives edu a group of its own
(docs/guest.md).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lab.model.arches import host_arch
from tests.conftest import lab
from tests.integration.conftest import summary
from vfiolib.vfio import LEGACY_MODES, MODES

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(host_arch() == "aarch64", reason="this host runs aarch64 guests natively"),
]

SCENARIO = """\
name: arm64-dma
kernels: [debian-stock]
machine:
  arch: aarch64
  memory: 2G
  cpus: 2
devices:
  - type: edu
"""
# VFIO's own container serves these modes; the stock kernel has no iommufd for the rest.
TYPE1 = tuple(m for m, (node, _) in LEGACY_MODES.items() if node == "/dev/vfio/vfio")
IOMMUFD = tuple(m for m in MODES if m not in TYPE1)


def test_an_aarch64_guest_copies_through_edu_behind_the_smmuv3(results, tmp_path: Path) -> None:
    scenario = tmp_path / "arm64.yaml"
    scenario.write_text(SCENARIO)
    done = lab("run", str(scenario), "-k", "memcpy_success", "--results", str(results))
    assert done.returncode == 0, done.stdout + done.stderr
    s = summary(results)
    (cell,) = s["cells"]
    assert s["accelerator"] == "tcg" and cell["verdict"] == "pass", cell
    assert cell["guest_release"].endswith("-arm64") and cell["container_provider"] == "vfio"
    cell_dir = Path(cell["dir"])
    argv = json.loads((cell_dir / "qemu-argv.json").read_text())
    assert argv[0] == "qemu-system-aarch64"
    assert argv[argv.index("-machine") + 1] == "virt,gic-version=3,iommu=smmuv3"
    records = {r["name"]: r for r in json.loads((cell_dir / "tests.json").read_text())}
    assert TYPE1 and set(records) == {f"vfio_pci_driver_test.{m}.memcpy_success" for m in MODES}
    for mode in TYPE1:
        r = records[f"vfio_pci_driver_test.{mode}.memcpy_success"]
        assert r["outcome"] == "pass", r
        assert "bytes_copied: 8192" in r["diagnostics"], r["diagnostics"]
    for mode in IOMMUFD:  # the stock kernel's config has no iommufd: a skip that says so
        r = records[f"vfio_pci_driver_test.{mode}.memcpy_success"]
        assert r["outcome"] == "skip" and r["reason"].startswith("CONFIG_IOMMUFD not set"), r
    # The SMMUv3 translated edu's DMA: it probed, and edu joined one of its groups.
    dmesg = (cell_dir / "dmesg.txt").read_text()
    assert re.search(r"arm-smmu-v3 \S+: ias \d+-bit", dmesg), dmesg[-3000:]
    assert re.search(r"vfio-pci 0000:01:00\.0: Adding to iommu group \d+", dmesg), dmesg[-3000:]
