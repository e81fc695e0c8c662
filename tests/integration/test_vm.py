"""Real guests under real QEMU, the real payload over real SSH. Marked `vm`; CI runs them.

Each test also checks that the run left no QEMU process and no overlay behind.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, lab
from tests.integration.conftest import lab_qemus, summary

pytestmark = pytest.mark.vm


def tap_lines(cell_dir: str) -> list[str]:
    """The result lines of a cell's TAP (each is followed by its YAML block)."""
    lines = (Path(cell_dir) / "results.tap").read_text().splitlines()
    return [line for line in lines if line.startswith(("ok ", "not ok "))]


def test_quick_scenario_runs_the_payload(results):
    done = lab("run", "quick", "--results", str(results))
    assert done.returncode == 0, done.stdout + done.stderr
    s = summary(results)
    assert s["scenario"] == "quick" and s["exit_code"] == 0
    assert s["accelerator"] in ("tcg", "kvm")
    (cell,) = s["cells"]
    assert cell["verdict"] == "pass"
    records = json.loads((Path(cell["dir"]) / "tests.json").read_text())
    # Every test passed, except skips for what the stock kernel's config or edu itself
    # does not have; a skip for anything else would hide a broken feature.
    allowed = re.compile(
        r"^(CONFIG_\w+ not set( and CONFIG_\w+ not set)* \(no .+\)|"
        r"the device has no MSIX|this kernel does not mmap VFIO dma-bufs .*|"
        r"edu has no RAM BAR in this scenario .*)$"
    )
    for r in records:
        assert r["outcome"] == "pass" or (r["outcome"] == "skip" and allowed.match(r["reason"])), (
            r["name"],
            r["outcome"],
            r["reason"],
        )
    # Each payload module passed something, except those the stock kernel or stock edu
    # cannot serve.
    passed = {r["name"].split(".")[0] for r in records if r["outcome"] == "pass"}
    modules = {p.stem for p in (REPO / "guest_tests").glob("*_test.py")}
    assert modules - passed == {
        "vfio_iommufd_setup_test",
        "vfio_pci_dmabuf_test",
        "vfio_pci_p2p_test",
    }
    iommufd_skips = [r for r in records if "iommufd" in r["name"] and r["outcome"] == "skip"]
    assert iommufd_skips and all("CONFIG_IOMMUFD" in r["reason"] for r in iommufd_skips)
    assert cell["boot_to_ssh_s"] > 0 and cell["wall_s"] >= cell["boot_to_ssh_s"]
    # Restored from the machine's snapshot, or booted cold and saved if it had none.
    assert re.fullmatch(r"(saved|restored) [0-9a-f]{16}", cell["snapshot"]), cell["snapshot"]
    start = {"restore", "resume"} if cell["snapshot"].startswith("restored") else {"setup"}
    phases = {"prepare", "qemu_start", "ssh", "payload", "teardown"} | start
    assert phases <= set(cell["phases_s"]), cell["phases_s"]
    for name in ("results.tap", "console.log", "dmesg.txt", "qemu-argv.json"):
        assert (Path(cell["dir"]) / name).stat().st_size > 0, name
    lines = tap_lines(cell["dir"])
    for test in (
        "vfio_container_test.vfio_type1_iommu.container_setup",
        "vfio_pci_device_test.validate_bars",
        "vfio_pci_device_test.bar0_identification",
        "vfio_dma_mapping_test.vfio_type1v2_iommu_anonymous.dma_map_unmap",
        "vfio_pci_driver_test.vfio_type1_iommu.memcpy_success",
        "vfio_pci_driver_test.vfio_type1v2_iommu.memcpy_to_unmapped_iova",
    ):
        assert any(line.startswith("ok ") and line.endswith(f" {test}") for line in lines), test
    assert any(
        "iommufd_compat_type1" in line and "# SKIP CONFIG_IOMMUFD not set" in line for line in lines
    )
    # The unmapped-IOVA DMA really went through the vIOMMU: the guest kernel logged the fault.
    assert "DMAR: [DMA Write" in (Path(cell["dir"]) / "dmesg.txt").read_text()
    assert (
        "vfio-lab: test-start vfio_pci_driver_test" in (Path(cell["dir"]) / "dmesg.txt").read_text()
    )
    assert json.loads((Path(cell["dir"]) / "qemu-argv.json").read_text())[0] == "qemu-system-x86_64"
    assert (results / "latest").resolve() == (results / s["run_id"]).resolve()
    assert "debian-stock  pass" in done.stdout


def test_failing_cell_gives_exit_1_and_repro_runs_that_test_again(results):
    payload = REPO / "tests" / "fixtures" / "failing_payload"
    done = lab("run", "--payload", str(payload), "--results", str(results))
    assert done.returncode == 1, done.stdout + done.stderr
    (cell,) = summary(results)["cells"]
    assert cell["verdict"] == "fail"
    assert (cell["counts"]["pass"], cell["counts"]["fail"]) == (1, 1)
    assert "not ok 2 failing_test.ident_is_wrong_on_purpose" in tap_lines(cell["dir"])
    provenance = json.loads((Path(cell["dir"]) / "provenance.json").read_text())
    assert provenance["kernel"]["resolved_spec"].startswith("debian-stock:linux-image-")

    again = lab("repro", cell["dir"], "-k", "wrong_on_purpose", "--results", str(results))
    assert again.returncode == 1, again.stdout + again.stderr
    assert "qemu-system-x86_64" in again.stdout and "vfio-lab shell" in again.stdout
    assert "drift" not in again.stderr, again.stderr
    (rerun,) = summary(results)["cells"]
    assert rerun["name"] == cell["name"] and rerun["dir"] != cell["dir"]
    assert rerun["counts"]["fail"] == 1 and rerun["counts"]["pass"] == 0
    assert tap_lines(rerun["dir"])[-1] == "not ok 1 failing_test.ident_is_wrong_on_purpose"


def test_boot_timeout_is_an_infra_error_with_the_console_tail(results, tmp_path):
    scenario = tmp_path / "slow.yaml"
    scenario.write_text("machine:\n  memory: 2G\n  boot_timeout: 2\n")
    # Cold: a snapshot of the same machine (the deadline is no part of it) is up in 1.5 s.
    done = lab("run", str(scenario), "--no-snapshot", "--results", str(results), "--retries", "1")
    assert done.returncode == 3, done.stdout + done.stderr
    (cell,) = summary(results)["cells"]
    assert cell["verdict"] == "error"
    assert "no SSH answer within 2 s" in cell["infra_error"]
    assert "console tail" in cell["infra_error"]
    # --retries 1: a second attempt in its own directory, the first one's error kept.
    assert len(cell["earlier_attempts"]) == 1 and "no SSH answer" in cell["earlier_attempts"][0]
    assert cell["dir"].endswith("debian-stock.retry1")


def test_ctrl_c_during_boot_leaves_nothing_behind(results):
    proc = subprocess.Popen(
        # Cold: a restore is up in about a second, too soon to interrupt it inside the boot.
        [sys.executable, "-m", "lab", "run", "--no-snapshot", "--results", str(results)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Started as a script's background job is: with SIGINT ignored, which the lab
        # must not inherit (it did, and shrugged the interrupt off).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        if "booting" in line or time.monotonic() > deadline:
            break
    time.sleep(1.0)  # well inside the boot: QEMU runs, SSH is not up yet
    assert lab_qemus(), "QEMU should be running when Ctrl-C arrives"
    os.kill(proc.pid, signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    s = summary(results)
    assert s["interrupted"] is True and s["exit_code"] == 130


def records(cell: dict) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads((Path(cell["dir"]) / "tests.json").read_text())}


def run_fixture_payload(results: Path, tmp_path: Path, payload: str, timeouts: str):
    """Run a payload from tests/fixtures on the stock kernel: exit 1, its one cell an error
    of the payload (not of the infrastructure); returns the run's output and the cell."""
    scenario = tmp_path / f"{payload}.yaml"
    scenario.write_text(f"payload:\n  tests: {REPO}/tests/fixtures/{payload}\n{timeouts}")
    done = lab("run", str(scenario), "--results", str(results))
    assert done.returncode == 1, done.stdout + done.stderr
    (cell,) = summary(results)["cells"]
    assert cell["verdict"] == "error" and cell["infra_error"] is None
    return done, cell


def test_guest_crash_is_an_error_of_the_test_that_crashed_it(results, tmp_path):
    timeouts = "  test_timeout: 600\n  stall_timeout: 600\n"
    done, cell = run_fixture_payload(results, tmp_path, "crash_payload", timeouts)
    tests = records(cell)
    assert tests["crash_test.before"]["outcome"] == "pass"
    crash = tests["crash_test.crash_the_kernel"]
    assert crash["outcome"] == "error"
    assert crash["reason"] == "panic: Kernel panic - not syncing: sysrq triggered crash"
    assert "panic: Kernel panic - not syncing: sysrq triggered crash" in crash["kernel"]
    assert any("sysrq: Trigger a crash" in line for line in crash["console"])
    assert tests["crash_test.after"]["outcome"] == "notrun"
    assert cell["unexpected"] == ["crash_test.crash_the_kernel: error", "crash_test.after: notrun"]
    # Seen on the console at once (panic=-1, -no-reboot): no 600 s timeout was waited for.
    assert cell["wall_s"] < 90
    assert "crash_test.crash_the_kernel: error" in done.stdout


def test_hung_test_is_an_error_after_its_timeout_and_the_guest_is_killed(results, tmp_path):
    _, cell = run_fixture_payload(results, tmp_path, "hang_payload", "  test_timeout: 10\n")
    tests = records(cell)
    assert tests["hang_test.before"]["outcome"] == "pass"
    hang = tests["hang_test.hang"]
    assert hang["outcome"] == "error"
    assert hang["reason"] == (
        "hang: hang_test.hang still running after the per-test timeout of 10 s"
    )
    assert any(line.startswith("console: ") for line in hang["diagnostics"])
    assert tests["hang_test.after"]["outcome"] == "notrun"
    assert tests["hang_test.after"]["reason"] == "not run: the guest stopped during hang_test.hang"
    assert "stopped early: hang" in " ".join(cell["problems"])


def test_a_c_program_that_dies_part_way_is_an_error_and_its_other_tests_notrun(results, tmp_path):
    """The payload's own programs (suite `programs`) through the real C-suite runner on
    the stock kernel: a static stand-in for a kselftest_harness.h program lists five
    tests (-l), reports three, then aborts. The cell is no clean pass."""
    payload = tmp_path / "payload"
    (payload / "programs").mkdir(parents=True)
    fake = REPO / "tests" / "fixtures" / "kselftest" / "fake_harness.c"
    built = payload / "programs" / "fake_harness"
    defines = ["-DREPORTED=3", "-DEND=ABORT"]
    subprocess.run(["gcc", "-static", "-o", str(built), str(fake), *defines], check=True)
    scenario = tmp_path / "programs.yaml"
    scenario.write_text(f"payload:\n  tests: {payload}\n  suites: [programs]\n")
    done = lab("run", str(scenario), "--results", str(results))
    assert done.returncode == 1, done.stdout + done.stderr
    (cell,) = summary(results)["cells"]
    assert cell["verdict"] == "error" and cell["infra_error"] is None, cell
    tests = {name.removeprefix("programs:"): r for name, r in records(cell).items()}
    first = "vfio_fake_harness_fixture"
    assert {name: r["outcome"] for name, r in tests.items()} == {
        f"{first}.first": "pass",
        f"{first}.second": "pass",
        f"{first}.third": "pass",
        "fake_harness": "error",
        "fake_variants.iommufd.map": "notrun",
        "fake_variants.vfio_type1_iommu_with_a_long_name.map": "notrun",
    }
    assert tests["fake_harness"]["reason"] == "killed by SIGABRT after reporting 3 of 5 tests"
    assert "stderr: the fake's last words" in tests["fake_harness"]["diagnostics"]
    assert cell["counts"]["error"] == 1 and cell["counts"]["notrun"] == 2
    assert (Path(cell["dir"]) / "results.programs.tap").is_file()


def test_known_failure_is_xfail_and_the_run_passes(results, tmp_path):
    scenario = tmp_path / "known.yaml"
    scenario.write_text(
        f"payload:\n  tests: {REPO}/tests/fixtures/failing_payload\n"
        "expectations:\n"
        "  - test: failing_test.*_on_purpose\n"
        "    cells: debian-*\n"
        "    reason: edu's ID is not 0xdeadbeef\n"
        "    link: https://example.invalid/edu-ident\n"
    )
    done = lab("run", str(scenario), "--results", str(results))
    assert done.returncode == 0, done.stdout + done.stderr
    (cell,) = summary(results)["cells"]
    assert cell["verdict"] == "pass" and cell["unexpected"] == []
    assert (cell["counts"]["pass"], cell["counts"]["xfail"]) == (1, 1)
    known = records(cell)["failing_test.ident_is_wrong_on_purpose"]
    assert known["reason"].startswith("known failure: edu's ID is not 0xdeadbeef (was fail")
    assert known["expectation"]["link"] == "https://example.invalid/edu-ident"
    junit = (results / "latest" / "junit.xml").read_text()
    assert '<skipped message="XFAIL: known failure: edu' in junit


def test_compare_two_real_runs_that_differ_by_one_test(results, tmp_path):
    """The second run's payload has one more test, which fails: exactly that is reported."""
    failing = REPO / "tests" / "fixtures" / "failing_payload"
    before = tmp_path / "before"
    shutil.copytree(failing, before)
    source = (before / "failing_test.py").read_text()
    cut = source.index("def test_ident_is_wrong_on_purpose")
    (before / "failing_test.py").write_text(source[:cut])
    old_root, new_root = results / "old", results / "new"
    assert lab("run", "--payload", str(before), "--results", str(old_root)).returncode == 0
    assert lab("run", "--payload", str(failing), "--results", str(new_root)).returncode == 1
    old, new = (old_root / "latest").resolve(), (new_root / "latest").resolve()
    done = lab("compare", str(old), str(new))
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.splitlines()[1:] == [
        "new failures and errors (1):",
        "  debian-stock  failing_test.ident_is_wrong_on_purpose  absent -> fail",
        "regressions: yes",
    ]
    # Backwards, the test is gone: lost coverage, a regression unless it is accepted.
    back = lab("compare", str(new), str(old))
    assert back.returncode == 1
    lost = [
        "lost coverage: tests that ran and now skip or are gone (1):",
        "  debian-stock  failing_test.ident_is_wrong_on_purpose  fail -> absent",
    ]
    assert back.stdout.splitlines()[1:] == [*lost, "regressions: yes"]
    accepted = lab("compare", "--accept-lost", str(new), str(old))
    assert accepted.returncode == 0
    assert accepted.stdout.splitlines()[1:] == [
        *lost,
        "lost coverage accepted (--accept-lost)",
        "regressions: none",
    ]


def test_shell_command_sees_vfio_pci_and_its_status_propagates(results):
    done = lab("shell", "-q", "--", "sh", "-c", "lspci -nk -d 1234:11e8; exit 7")
    assert done.returncode == 7, done.stdout + done.stderr
    assert "Kernel driver in use: vfio-pci" in done.stdout


def _gdb_stub_answers(port: int) -> bool:
    """Ask QEMU's gdbstub why the target stopped (`?`), then let the guest continue (`c`)."""
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"$?#3f")
        while b"#" not in reply:  # a stop reply packet: "$T05thread:01;#07"
            chunk = s.recv(256)
            if not chunk:
                break
            reply += chunk
        s.sendall(b"+$c#63")
    return b"$T" in reply


def test_interactive_shell_qmp_console_and_gdb(results, tmp_path):
    port = free_tcp_port()
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab", "shell", "-q", "--gdb", str(port)],
        cwd=REPO,
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    try:
        out = read_until(master, b"bound", proc)
        assert b"127.0.0.1:%d" % port in out
        assert _gdb_stub_answers(port)
        status = lab("qmp", "query-status")
        assert status.returncode == 0 and json.loads(status.stdout)["return"]["status"] == "running"
        assert "Linux version" in lab("console").stdout
        os.write(master, b"echo $((6*7)); tty; exit 3\n")
        out = read_until(master, b"logout", proc)
        assert proc.wait(timeout=60) == 3
        assert b"42" in out and b"/dev/pts/" in out
    finally:
        if proc.poll() is None:
            proc.terminate()  # the lab stops its guest on SIGTERM, like on Ctrl-C
            proc.wait(timeout=60)
        os.close(master)


def test_keep_overlay_and_boot_it_again(results):
    done = lab("shell", "-q", "--keep", "--", "sh", "-c", "echo kept-state > /root/marker")
    assert done.returncode == 0, done.stderr
    kept = Path(re.search(r"kept the overlay: (\S+)", done.stderr).group(1))
    try:
        assert kept.is_file()
        again = lab("shell", "-q", "--no-bind", "--overlay", str(kept), "--", "cat", "/root/marker")
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == "kept-state"
        assert kept.is_file(), "a reused overlay must not be deleted"
    finally:
        shutil.rmtree(kept.parent)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_until(fd: int, marker: bytes, proc: subprocess.Popen, timeout: float = 180) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while marker not in buf and time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                buf += os.read(fd, 4096)
            except OSError:
                break
    return buf
