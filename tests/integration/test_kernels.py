"""Kernels from source, for real: the Debian source package, merge_config.sh, builds, boots.

Marked `vm`: they need the network (Debian's archive) and, for the matrix test, build
two kernels (about 7 min cold on 2 cores, much less with a warm ccache) and boot them.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from lab.results.tap import TapResult, parse_text
from tests.conftest import REPO, lab

pytestmark = pytest.mark.vm


def test_impossible_combination_fails_before_any_boot(tmp_path):
    scenario = tmp_path / "impossible.yaml"
    scenario.write_text(
        "kernels: [debian:7.2]\nfragments: [iommufd]\n"
        "config:\n  IOMMUFD_VFIO_CONTAINER: [y]\n  VFIO_CONTAINER: [y]\n"
    )
    done = lab("run", str(scenario), "--results", str(tmp_path / "results"))
    assert done.returncode == 3, done.stdout + done.stderr
    (cell,) = json.loads((tmp_path / "results" / "latest" / "summary.json").read_text())["cells"]
    assert (
        "CONFIG_IOMMUFD_VFIO_CONTAINER: asked y, got n (depends on VFIO_GROUP && !VFIO_CONTAINER)"
        in cell["infra_error"]
    )
    assert cell["boot_to_ssh_s"] is None
    assert json.loads((Path(cell["dir"]) / "qemu-argv.json").read_text()) == []  # nothing booted


def test_option_unknown_to_the_tree_is_exit_2_with_its_line(tmp_path):
    scenario = tmp_path / "typo.yaml"
    scenario.write_text("kernels: [debian:7.2]\nconfig:\n  IOMMUFD_VFIO_CONTAINR: [y]\n")
    done = lab("run", str(scenario), "--results", str(tmp_path / "results"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert (
        f"{scenario}:3: config.IOMMUFD_VFIO_CONTAINR: IOMMUFD_VFIO_CONTAINR is not an option of linux-source-7.2="
        in done.stderr
    )


def _tap(cell: dict) -> dict[str, TapResult]:
    tap = parse_text((Path(cell["dir"]) / "results.tap").read_text())
    return {r.name: r for r in tap.results}


@pytest.fixture(scope="module")
def compat_run(tmp_path_factory):
    """Builds debian:7.2 twice, boots both, runs the whole payload in all five modes."""
    root = tmp_path_factory.mktemp("compat") / "results"
    # --retries 1: under TCG the guest's virtio-net has been seen to stall once in a while
    # (NETDEV WATCHDOG); when SSH then no longer answers, the lab tries the cell again.
    done = lab("run", "iommufd-compat", "--results", str(root), "--retries", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    return (root / "latest").resolve()


def test_iommufd_compat_matrix_shows_what_the_container_switch_changes(compat_run):
    cells = {c["name"]: c for c in json.loads((compat_run / "summary.json").read_text())["cells"]}
    on, off = cells["7.2-iommufd_vfio_container=y"], cells["7.2-iommufd_vfio_container=n"]
    for cell in (on, off):
        assert cell["verdict"] == "pass" and cell["counts"]["fail"] == 0
        assert cell["kernel_verified"] is True and cell["guest_release"].startswith("7.2")
    assert (on["container_provider"], off["container_provider"]) == ("iommufd", "vfio")
    tap_on, tap_off = _tap(on), _tap(off)
    # shared/seeds/000: type1 v1 through iommufd's /dev/vfio/vfio maps 4 KiB, VFIO's 1 GiB.
    v1_1gb = "vfio_dma_mapping_test.vfio_type1_iommu_anonymous_hugetlb_1gb.dma_map_unmap"
    assert tap_on[v1_1gb].diagnostic("iopte_size") == "4K"
    assert tap_off[v1_1gb].diagnostic("iopte_size") == "1G"
    v2_1gb = "vfio_dma_mapping_test.vfio_type1v2_iommu_anonymous_hugetlb_1gb.dma_map_unmap"
    assert (
        tap_on[v2_1gb].diagnostic("iopte_size") == tap_off[v2_1gb].diagnostic("iopte_size") == "1G"
    )
    # Native iommufd runs (not skipped) in both, real DMA included.
    for tap in (tap_on, tap_off):
        assert tap["vfio_pci_driver_test.iommufd.memcpy_success"].outcome == "pass"
        assert (
            tap["vfio_dma_mapping_mmio_test.iommufd.map_full_bar"].diagnostic("errno") is not None
        )
    # MMIO through type1: VFIO's container maps it, iommufd's refuses: upstream's test
    # fails there, and the scenario declares it a known failure (XFAIL with the reason).
    bar = "vfio_dma_mapping_mmio_test.vfio_type1_iommu.map_full_bar"
    assert tap_off[bar].diagnostic("unmapped") == "0x100000"
    assert tap_on[bar].diagnostic("errno") == "EFAULT"
    rec_on, rec_off = _records(on), _records(off)
    assert rec_on[bar]["outcome"] == "xfail" and rec_off[bar]["outcome"] == "pass"
    assert "iommufd's /dev/vfio/vfio cannot DMA-map MMIO" in rec_on[bar]["reason"]
    # Both configs promise iommufd, the cdev, dma-buf export and the hugepages: nothing of it
    # may skip. What may: edu's missing MSI-X, what needs the tweaked edu's RAM BAR (this
    # scenario gives edu none) and a dma-buf's mmap, which no config option promises (7.2
    # refuses it: EINVAL).
    allowed = (
        "the device has no MSIX",
        "edu has no RAM BAR",
        "this kernel does not mmap VFIO dma-bufs",
    )
    for recs in (rec_on, rec_off):
        skipped = {n: r["reason"] for n, r in recs.items() if r["outcome"] == "skip"}
        assert skipped and all(why.startswith(allowed) for why in skipped.values()), skipped


def _records(cell: dict) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads((Path(cell["dir"]) / "tests.json").read_text())}


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    """Debian's chromium, headless, with nothing that reaches out or needs a desktop."""
    return subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-extensions",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_report_of_the_two_cell_run_renders_in_chromium(compat_run, tmp_path):
    report = compat_run / "report.html"
    url = report.as_uri()
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", url, profile=tmp_path / "p1")
    assert dom.returncode == 0, dom.stderr
    tests = json.loads((compat_run / "7.2-iommufd_vfio_container=y" / "tests.json").read_text())
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body is not None, dom.stdout[:2000]
    # Set by the page's script after layout: every row is there, and the table has a size.
    assert f'data-rendered="{len(tests)}"' in body.group(1)
    height = re.search(r'data-matrix-height="(\d+)"', body.group(1))
    assert height is not None and int(height.group(1)) > 20 * len(tests)
    assert dom.stdout.count("<th>7.2-iommufd_vfio_container=") == 2
    seed = "vfio_dma_mapping_test.vfio_type1_iommu_anonymous_hugetlb_1gb.dma_map_unmap"
    row = re.search(
        rf"<tr class=\"([^\"]*)\" data-test=\"{re.escape(seed)}\">(.*?)</tr>", dom.stdout
    )
    assert row is not None and "differs" in row.group(1).split()
    assert "iopte_size: 4K" in row.group(2) and "iopte_size: 1G" in row.group(2)
    shot = compat_run / "report.png"
    filtered = f"{url}#differing"  # the rows that differ, at the top of the picture
    taken = chromium(
        "--window-size=1400,1000", f"--screenshot={shot}", filtered, profile=tmp_path / "p2"
    )
    assert taken.returncode == 0, taken.stderr
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 1400
    assert len(png) > 20_000  # a rendered page, not a blank one


def test_kernel_crash_in_one_cell_is_its_error_and_the_next_cell_runs(tmp_path):
    """The crash payload panics 7.2 with IOMMUFD_VFIO_CONTAINER=y and spares =n."""
    scenario = tmp_path / "crash-pair.yaml"
    scenario.write_text(
        (REPO / "scenarios" / "iommufd-compat.yaml").read_text()
        + f"payload:\n  tests: {REPO}/tests/fixtures/crash_payload\n"
        "  test_timeout: 600\n  stall_timeout: 600\n"
    )
    root = tmp_path / "results"
    done = lab("run", str(scenario), "--results", str(root), "--jobs", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    summary = json.loads((root / "latest" / "summary.json").read_text())
    on, off = summary["cells"]
    assert on["name"] == "7.2-iommufd_vfio_container=y" and on["verdict"] == "error"
    tests = {r["name"]: r for r in json.loads((Path(on["dir"]) / "tests.json").read_text())}
    crash = tests["crash_test.crash_the_kernel"]
    assert crash["outcome"] == "error"
    assert "panic: Kernel panic - not syncing: sysrq triggered crash" in crash["kernel"]
    assert tests["crash_test.after"]["outcome"] == "notrun"
    assert on["wall_s"] < 90  # seen at once, not after the 600 s timeouts
    assert off["verdict"] == "pass"
    assert (off["counts"]["pass"], off["counts"]["skip"]) == (2, 1)  # the crash test spared it
    junit = (root / "latest" / "junit.xml").read_text()
    assert "Kernel panic - not syncing: sysrq triggered crash" in junit


MODES = (
    "vfio_type1_iommu",
    "vfio_type1v2_iommu",
    "iommufd_compat_type1",
    "iommufd_compat_type1v2",
    "iommufd",
)
PATCH = REPO / "tests/fixtures/kernel_patches/0001-localversion-name-the-lab-s-patched-build.patch"


def patched_scenario(tmp_path: Path, patch: Path) -> Path:
    """The matrix's =n cell with a patch on top (its config, so ccache is warm)."""
    scenario = tmp_path / "patched.yaml"
    scenario.write_text(
        f"kernels:\n  - source: debian:7.2\n    patches: [{patch}]\n    name: 7.2-patched\n"
        "fragments: [iommufd, dmabuf, dyndbg]\nconfig:\n  IOMMUFD_VFIO_CONTAINER: [n]\n"
        f"payload:\n  tests: {REPO}/tests/fixtures/patched_payload\n"
    )
    return scenario


def test_a_patched_kernel_is_built_booted_and_recorded(tmp_path):
    """kernels: [{source, patches}]: the guest's own test sees the patch, and the cell
    records it (summary, provenance, a copy for repro)."""
    root = tmp_path / "results"
    done = lab("run", str(patched_scenario(tmp_path, PATCH)), "--results", str(root))
    assert done.returncode == 0, done.stdout + done.stderr
    (cell,) = json.loads((root / "latest" / "summary.json").read_text())["cells"]
    assert cell["name"] == "7.2-patched-iommufd_vfio_container=n"
    assert cell["counts"]["pass"] == 1 and cell["kernel_verified"]
    assert "-lab-patched-" in cell["kernel_release"]
    assert re.fullmatch(r"linux-source-7\.2=\S+\+patches:[0-9a-f]{16}", cell["kernel_identity"])
    kernel = json.loads((Path(cell["dir"]) / "provenance.json").read_text())["kernel"]
    (recorded,) = kernel["patches"]
    assert recorded["file"] == str(PATCH)
    assert (Path(cell["dir"]) / recorded["copy"]).read_bytes() == PATCH.read_bytes()


def test_a_patch_that_does_not_apply_is_exit_3_naming_it(tmp_path):
    stale = tmp_path / "stale.patch"
    stale.write_text(
        "--- a/Makefile\n+++ b/Makefile\n@@ -1,2 +1,2 @@\n-VERSION = 1\n+VERSION = 2\n"
        " PATCHLEVEL = 0\n"
    )
    root = tmp_path / "results"
    done = lab("run", str(patched_scenario(tmp_path, stale)), "--results", str(root))
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"patch {stale} does not apply" in done.stdout + done.stderr


def test_upstreams_vfio_selftests_run_beside_the_payload_and_agree(tmp_path):
    """payload.suites on the matrix's =n cell (its kernel is cached by now): the kernel's
    own VFIO selftests, built from the cell's tree with the lab's edu driver, drive edu in
    every IOMMU mode, and agree with the lab's tests of the same ids."""
    scenario = tmp_path / "suites.yaml"
    scenario.write_text(
        (REPO / "scenarios" / "iommufd-compat.yaml").read_text()
        + "payload:\n  suites: [lab, kselftest-vfio]\n"
        "  args: [-k, 'vfio_pci_driver_test or vfio_iommufd_setup_test']\n"
    )
    root = tmp_path / "results"
    done = lab("run", str(scenario), "--results", str(root), "--only", "*=n")
    assert done.returncode == 0, done.stdout + done.stderr
    (cell,) = json.loads((root / "latest" / "summary.json").read_text())["cells"]
    recs = {r["name"]: r for r in json.loads((Path(cell["dir"]) / "tests.json").read_text())}
    for mode in MODES:
        for case in ("init_remove", "memcpy_success", "send_msi", "memcpy_storm"):
            rec = recs[f"kselftest-vfio:vfio_pci_driver_test.{mode}.{case}"]
            assert rec["outcome"] == "pass" and rec["suite"] == "kselftest-vfio", rec
    assert recs["kselftest-vfio:vfio_cdev.attach_detatch_pt"]["outcome"] == "pass"
    # The runner's kmsg markers put the kernel's lines on the C test that caused them: the
    # suite's first DMA from an unmapped IOVA (the first fault in seconds: not rate-limited).
    faulted = recs["kselftest-vfio:vfio_pci_driver_test.vfio_type1_iommu.memcpy_from_unmapped_iova"]
    assert any(k.startswith("iommu fault: DMAR") for k in faulted["kernel"]), faulted
    parity = lab("parity", str(root / "latest"))
    assert parity.returncode == 0, parity.stdout + parity.stderr
    counts = json.loads((root / "latest" / "parity.json").read_text())["cells"][cell["name"]]
    # 7 driver cases in 5 modes and 6 vfio_cdev cases ran in both suites.
    assert counts["shared"] == 41 and counts["agree"] == 41, counts
