"""The test suites a cell can run (`payload.suites`): the lab's own pytest payload, and
the kernel's C selftests built from the cell's own kernel tree.

The registry here knows each suite's name and needs; `lab.build.selftests` builds the
C suites (and finds the payload's own programs), and `lab.run.payload` runs them.
"""

from __future__ import annotations

from typing import ClassVar

from lab.core.registry import Registry


class Suite:
    name: ClassVar[str]
    doc: ClassVar[str]
    selftest_dir: ClassVar[str | None] = None  # tools/testing/selftests/<dir> (C suites)
    programs_dir: ClassVar[str | None] = None  # <payload>/<dir>: programs built elsewhere
    needs_device: ClassVar[bool] = True  # its programs take the device's BDF


class LabSuite(Suite):
    name = "lab"
    doc = "the lab's pytest payload (guest_tests/, or payload.tests)"


class KselftestVfio(Suite):
    name = "kselftest-vfio"
    doc = "the kernel's tools/testing/selftests/vfio, with the lab's edu driver for its library"
    selftest_dir = "vfio"


class KselftestIommu(Suite):
    name = "kselftest-iommu"
    doc = "the kernel's tools/testing/selftests/iommu: iommufd and iommufd_fail_nth (no device)"
    selftest_dir = "iommu"
    needs_device = False


class PayloadPrograms(Suite):
    name = "programs"
    doc = (
        "the payload's own programs: every executable in programs/ of the payload "
        "directory, printing KTAP, run as the C selftests are (the device's BDF as argument)"
    )
    programs_dir = "programs"


SUITES: Registry[Suite] = Registry(
    "suite", {s.name: s() for s in (LabSuite, KselftestVfio, KselftestIommu, PayloadPrograms)}
)
DEFAULT_SUITE = LabSuite.name
