"""The CLI's exit codes and messages for bad input, without booting anything."""

from __future__ import annotations

import shlex
import socket

import pytest

from lab.cli import main
from tests.conftest import REPO


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_missing_scenario_file_is_exit_2(capsys, tmp_path):
    code, _, err = run(capsys, "run", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert f"{tmp_path / 'nope.yaml'}: <file>: no such scenario file" in err


def test_bad_flag_is_exit_2(capsys):
    assert main(["run", "--accel", "hvf"]) == 2
    assert "invalid choice: 'hvf'" in capsys.readouterr().err
    assert main(["run", "--bisect", "--jobs", "x"]) == 128  # stops a bisection too
    assert main(["--help"]) == 0


def test_missing_system_qemu_is_exit_3_with_the_doctor_fix(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("lab.cli.doctor.shutil.which", lambda name: None)
    code, _, err = run(capsys, "run", "--results", str(tmp_path / "results"))
    assert code == 3
    assert "qemu-system-x86_64 (not found)" in err
    assert "apt-get install --no-install-recommends qemu-system-x86" in err
    assert "vfio-lab doctor" in err


def test_lab_qemu_shows_in_the_dry_run_without_building(capsys):
    code, out, _ = run(capsys, "run", "--dry-run", "edu-bigbar")
    assert code == 0
    assert "# qemu: lab: the lab's build of qemu 1:10.0.13" in out
    assert "0001-hw-misc-edu-add-an-optional-RAM-backed-64-bit-BAR.patch" in out
    argv = shlex.split(next(line for line in out.splitlines() if not line.startswith("#")))
    assert argv[0] == "<lab qemu>"
    edu = "edu,bus=rp0,dma_mask=0xffffffffffffffff,ram-bar-size=0x40000000,ram-bar-index=1"
    assert f"{edu},dma-delay-ns=10000" in argv


def test_a_dma_delay_reaches_the_lab_qemus_argv_and_an_hour_is_allowed(capsys, tmp_path):
    path = tmp_path / "delay.yaml"
    path.write_text(
        "machine: {qemu: lab}\n"
        "devices:\n  - type: edu\n    dma_delay: 1.5us\n  - type: edu\n    dma_delay: 3600s\n"
    )
    code, out, _ = run(capsys, "run", "--dry-run", str(path))
    assert code == 0
    argv = shlex.split(next(line for line in out.splitlines() if not line.startswith("#")))
    assert "edu,bus=rp0,dma_mask=0xffffffffffffffff,dma-delay-ns=1500" in argv
    assert "edu,bus=rp1,dma_mask=0xffffffffffffffff,dma-delay-ns=3600000000000" in argv


def test_missing_payload_dir_is_exit_2(capsys, tmp_path):
    code, _, err = run(capsys, "run", "--payload", str(tmp_path / "none"), "--dry-run")
    assert code == 2 and "--payload" in err


def test_dry_run_prints_the_argv_and_boots_nothing(capsys):
    code, out, _ = run(capsys, "run", "--dry-run", "--accel", "tcg")
    assert code == 0
    command = [line for line in out.splitlines() if not line.startswith("#")]
    argv = shlex.split(command[0])
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-accel") + 1] == "tcg,thread=multi"
    assert "edu,bus=rp0,dma_mask=0xffffffffffffffff" in argv


def test_list_prints_cells(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    assert out.splitlines()[1].strip() == "debian-stock"


def test_schema_documents_every_field(capsys):
    code, out, _ = run(capsys, "schema")
    assert code == 0
    for key in (
        "machine.memory",
        "machine.hugepages",
        "devices[].dma_mask",
        "devices[].dma_delay",
        "payload.timeout",
        "intel-iommu",
        "edu",
        "default: edu's own 100 ms",
    ):
        assert key in out


def test_repro_of_a_directory_that_is_not_a_cell_is_exit_2(capsys, tmp_path):
    code, _, err = run(capsys, "repro", str(tmp_path))
    assert code == 2
    assert f"{tmp_path} is not a cell directory of a run (it has no provenance.json)" in err
    code, _, err = run(capsys, "repro", str(tmp_path / "missing"))
    assert code == 2 and "no such directory" in err


def test_shell_unknown_cell_is_exit_2(capsys):
    code, _, err = run(capsys, "shell", "--cell", "7.2-nope", "--", "true")
    assert code == 2
    assert "has no cell '7.2-nope'; its cells: debian-stock" in err


def test_gdb_port_in_use_is_exit_2_before_anything_boots(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run(capsys, "shell", "--gdb", str(port), "--", "true")
    assert code == 2
    assert f"--gdb: port {port} on 127.0.0.1 is not free" in err


def test_command_after_double_dash_only_for_shell(capsys):
    code, _, err = run(capsys, "run", "--", "ls")
    assert code == 2 and "only `vfio-lab shell` takes a command after --" in err


def test_qmp_with_no_vm_running_is_exit_2(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("VFIO_LAB_CACHE", str(tmp_path))
    code, _, err = run(capsys, "qmp", "query-status")
    assert code == 2 and "no lab VM is running at all" in err


def test_jobs_must_be_positive_and_not_with_gdb(capsys):
    code, _, err = run(capsys, "run", "--jobs", "0")
    assert code == 2 and "--jobs: 0 is not a positive number" in err
    code, _, err = run(capsys, "run", "--jobs", "2", "--gdb", "4321")
    assert code == 2 and "--gdb serves one guest at a time" in err


def test_default_jobs_respects_cores_and_memory(monkeypatch):
    from lab.model import scenario
    from lab.run import matrix

    s = scenario.load(scenario.DEFAULT_SCENARIO)  # 2 vCPUs, 4 GiB per guest
    gib = 1 << 20  # /proc/meminfo counts kB
    monkeypatch.setattr(matrix, "Path", lambda _: FakeMeminfo(24 * gib))
    monkeypatch.setattr(matrix.os, "cpu_count", lambda: 1)
    assert matrix.default_jobs(s) == 1
    monkeypatch.setattr(matrix.os, "cpu_count", lambda: 2)
    assert matrix.default_jobs(s) == 2  # a core per cell, not one per vCPU
    monkeypatch.setattr(matrix.os, "cpu_count", lambda: 64)
    assert matrix.default_jobs(s) == 4  # now memory is the limit: (24 - 2) // 4.5 GiB
    monkeypatch.setattr(matrix, "Path", lambda _: FakeMeminfo(4 * gib))
    assert matrix.default_jobs(s) == 1  # less than a guest's worth spare is still one


class FakeMeminfo:
    def __init__(self, kib: int) -> None:
        self.kib = kib

    def read_text(self) -> str:
        return f"MemTotal:       {self.kib} kB\nMemFree:        1 kB\n"


def test_negative_retries_is_exit_2(capsys):
    code, _, err = run(capsys, "run", "--retries", "-1")
    assert code == 2 and "--retries: -1 is negative" in err


@pytest.mark.parametrize(
    ("command", "text", "where"),
    [
        ("run", "name: bad\nmachine:\n  cpu: 4\n", "3: machine.cpu: unknown key"),
        ("list", "machine:\n  boot_timeout: soon\n", "2: machine.boot_timeout: expected a number"),
        ("list", "payload:\n  stall_timeout: 0\n", "2: payload.stall_timeout: must be positive"),
        ("list", "payload:\n  test_timeout: -1\n", "2: payload.test_timeout: must be positive"),
        (
            "list",
            "expectations:\n  - test: 'a.*'\n    reason: ' '\n",
            "3: expectations[0].reason: must not be empty",
        ),
        (
            "list",
            "expectations:\n  - reason: known\n",
            "2: expectations[0].test: required key is missing",
        ),
        (
            "list",
            "expectations:\n  - test: a\n    reason: r\n    url: x\n",
            "4: expectations[0].url: unknown key; known keys: cells, kernel, link, reason, suite, test",
        ),
        (
            "run",
            "machine:\n  qemu: /nonexistent/qemu-system-x86_64\n",
            "2: machine.qemu: '/nonexistent/qemu-system-x86_64' is neither system nor lab",
        ),
        (
            "list",
            "devices:\n  - type: edu\n    bar: {size: 1G}\n",
            "3: devices[0].bar: Debian's QEMU has no such BAR; set machine.qemu: lab",
        ),
        (
            "list",
            "machine: {qemu: lab}\ndevices:\n  - type: edu\n    bar: {size: 3G}\n",
            "4: devices[0].bar.size: 0xc0000000 is not a power of two from 4K to 64G",
        ),
        (
            "list",
            "machine: {qemu: lab}\ndevices:\n  - type: edu\n    bar: {size: 2K}\n",
            "4: devices[0].bar.size: 0x800 is not a power of two from 4K to 64G",
        ),
        (
            "list",
            "machine: {qemu: lab}\ndevices:\n  - type: edu\n    bar:\n      size: 1G\n      index: 5\n",
            "6: devices[0].bar.index: must be 1 to 4",
        ),
        (
            "list",
            "devices:\n  - type: edu\n  - type: igb\n",
            "3: devices[1].type: Debian's QEMU has no igb; set machine.qemu: lab",
        ),
        (
            "list",
            "devices:\n  - type: ivshmem\n",
            "2: devices[0]: a ivshmem needs bar: {size: ...}",
        ),
        (
            "list",
            "devices:\n  - type: ivshmem\n    bar: {size: 64M, index: 1}\n",
            "3: devices[0].bar.index: a ivshmem's RAM BAR is always BAR2",
        ),
        (
            "list",
            "machine: {qemu: lab}\ndevices:\n  - type: igb\n    bar: {size: 1M}\n",
            "4: devices[0].bar: a igb has no RAM BAR to size",
        ),
        (
            "list",
            "machine: {qemu: lab}\ndevices:\n"
            + "".join("  - type: edu\n    bar: {size: 64G}\n" for _ in range(3)),
            "2: devices: RAM BARs of 192 GiB do not fit the guest's 64-bit PCI window",
        ),
        (
            "list",
            "devices:\n  - type: edu\n    dma_delay: 10us\n",
            "3: devices[0].dma_delay: Debian's QEMU cannot set the edu's DMA delay "
            "(it is always 100 ms); set machine.qemu: lab",
        ),
        (
            "list",
            "machine: {qemu: system}\ndevices:\n  - type: edu\n  - type: edu\n    dma_delay: 0ns\n",
            "5: devices[1].dma_delay: Debian's QEMU cannot set",
        ),
        (
            "list",
            "machine: {qemu: lab}\ndevices:\n  - type: edu\n    dma_delay: 10\n",
            "4: devices[0].dma_delay: expected a duration with a unit such as 10us, got 10",
        ),
        (
            "list",
            "machine: {qemu: lab}\ndevices:\n  - type: edu\n    dma_delay: 10 min\n",
            "4: devices[0].dma_delay: not a duration: '10 min' (a number and a unit, ns, us, ms "
            "or s: e.g. 10us)",
        ),
        (
            "list",
            "machine: {qemu: lab}\ndevices:\n  - type: edu\n    dma_delay: 0.5ns\n",
            "4: devices[0].dma_delay: '0.5ns' is not a whole number of nanoseconds",
        ),
        (
            "list",
            "machine: {qemu: lab}\ndevices:\n  - type: edu\n    dma_delay: 3600.000000001s\n",
            "4: devices[0].dma_delay: 3600000000001 ns is longer than the edu's limit, 3600 s",
        ),
        (
            "list",
            "machine: {qemu: lab}\ndevices:\n  - type: edu\n  - type: igb\n    dma_delay: 1ms\n",
            "5: devices[1].dma_delay: a igb has no DMA delay to set",
        ),
        (
            "list",
            "devices:\n  - type: ivshmem\n    bar: {size: 64M}\n    dma_delay: 1ms\n",
            "4: devices[0].dma_delay: a ivshmem has no DMA delay to set",
        ),
    ],
)
def test_bad_scenario_is_exit_2_with_file_line_field(capsys, tmp_path, command, text, where):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, _, err = run(capsys, command, str(path))
    assert code == 2
    assert f"{path}:{where}" in err


def test_shell_overlay_that_is_not_a_file_is_exit_2(capsys, tmp_path):
    code, _, err = run(capsys, "shell", "--overlay", str(tmp_path / "gone.qcow2"), "--", "true")
    assert code == 2 and f"--overlay: {tmp_path / 'gone.qcow2'} is not a file" in err


def test_tap_command_summarizes_and_names_what_is_missing(capsys, tmp_path):
    code, out, _ = run(capsys, "tap", str(REPO / "tests" / "golden" / "tap" / "truncated.tap"))
    assert code == 1
    assert "1 results (pass 1, notrun 2)" in out
    assert "problem: the output ends inside the subtests of 'two': it was cut short" in out
    corrupt = tmp_path / "results.tap"
    corrupt.write_bytes(b"\x7fELF\x00\x01\xff\xfe garbage\nok\n\x00\x00")
    code, out, _ = run(capsys, "tap", str(corrupt))
    assert code == 1 and "lines that are not TAP were skipped" in out
    assert "problem: no TAP plan" in out
    code, _, err = run(capsys, "tap", str(tmp_path / "missing.tap"))
    assert code == 2 and "missing.tap: No such file or directory" in err


def test_builtin_scenarios_are_found_by_name_from_anywhere(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "list", "iommufd-compat")
    assert code == 0
    assert "7.2-iommufd_vfio_container=y" in out


def test_unknown_scenario_name_lists_the_builtin_ones(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "list", "quik")
    assert code == 2
    assert "quik: no such scenario file, and no built-in scenario of that name" in err
    assert "built-in: arm64, dmabuf, edu-bigbar, igb, iommufd-compat, nightly, parity, quick" in err


def test_a_crash_of_the_lab_is_exit_4_with_a_request_for_a_bug_report(capsys, monkeypatch):
    def broken(args):
        raise ZeroDivisionError("a lab bug")

    monkeypatch.setattr("lab.cli.info.cmd_schema", broken)
    code, _, err = run(capsys, "schema")
    assert code == 4
    assert "ZeroDivisionError: a lab bug" in err  # the traceback
    assert "this is a bug in vfio-lab; please report it" in err


def test_a_qmp_failure_is_an_infrastructure_error(capsys, monkeypatch):
    from qemu.qmp.protocol import ConnectError

    def racing(args):
        raise ConnectError("Failed to establish connection", OSError("refused"))

    monkeypatch.setattr("lab.cli.info.cmd_schema", racing)
    code, _, err = run(capsys, "schema")
    assert code == 3
    assert "QMP: ConnectError" in err


@pytest.mark.parametrize(
    ("code", "bisect"), [(0, 0), (1, 1), (2, 128), (3, 125), (4, 128), (130, 128)]
)
def test_bisect_exit_codes(capsys, monkeypatch, code, bisect):
    monkeypatch.setattr("lab.cli.run.cmd_run", lambda args: code)
    assert main(["run", "--bisect"]) == bisect
    assert main(["run"]) == code


def test_bisect_maps_an_error_raised_before_any_cell(capsys, tmp_path):
    code, _, _ = run(capsys, "run", "--bisect", str(tmp_path / "missing.yaml"))
    assert code == 128  # a scenario error stops the bisection


def test_a_reader_that_goes_away_is_no_crash():
    """`vfio-lab list nightly | head -0`: the pipe is closed before the lab writes."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "lab", "list", "nightly"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # long before the interpreter has started
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in err and "Exception" not in err, err
