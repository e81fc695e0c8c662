"""Real guests, real QEMU, real SSH: the lab installed from a wheel, guests kept in their
box, two runs on one cache, and nothing left behind by a lab killed with SIGKILL or
interrupted twice."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from lab.core.cache import Cache
from lab.vm.accel import kvm_unusable
from tests.conftest import REPO, lab
from tests.integration.conftest import copy_source, lab_qemus, summary, vm_scratch

pytestmark = pytest.mark.vm

# One quick test of the payload: enough to prove a real run, cheap under TCG.
ONE_TEST = ["-k", "vfio_container_test and vfio_type1v2_iommu"]


def test_wheel_installed_outside_the_checkout_lists_shows_and_runs(tmp_path):
    src = copy_source(tmp_path / "src")
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(src)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("vfio_lab-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def vfio_lab(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(venv / "bin" / "vfio-lab"), *args],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            check=False,
        )

    listed = vfio_lab("list", "iommufd-compat")
    assert listed.returncode == 0, listed.stderr
    assert "7.2-iommufd_vfio_container=y" in listed.stdout
    shown = vfio_lab("run", "--dry-run")
    assert shown.returncode == 0, shown.stderr
    assert "qemu-system-x86_64 -name" in shown.stdout
    done = vfio_lab("run", *ONE_TEST, "--results", "results")
    assert done.returncode == 0, done.stdout + done.stderr
    (cell,) = summary(elsewhere / "results")["cells"]
    assert cell["counts"]["pass"] == 1, cell
    provenance = json.loads((elsewhere / cell["dir"] / "provenance.json").read_text())
    # The payload came out of the installed package, not out of the checkout.
    assert provenance["payload"]["tests"].startswith(str(venv)), provenance["payload"]


class Listener:
    """A TCP server on the host's 127.0.0.1 that counts who connects."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


# Prints what happened and exits 0 only when the connection failed.
GUEST_CONNECT = """
import socket, sys
try:
    socket.create_connection(("10.0.2.2", {port}), timeout=5).close()
except OSError as e:
    print("blocked:", type(e).__name__, e)
    sys.exit(0)
print("connected")
sys.exit(1)
"""


def test_guest_cannot_reach_a_service_on_the_hosts_loopback(results):
    listener = Listener()
    try:
        # The listener is real: the host itself reaches it.
        socket.create_connection(("127.0.0.1", listener.port), timeout=5).close()
        deadline = time.monotonic() + 5
        while listener.accepted < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listener.accepted == 1
        code = GUEST_CONNECT.format(port=listener.port)
        done = lab("shell", "-q", "--no-bind", "--", "python3", "-c", code)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith("blocked:"), done.stdout
        assert listener.accepted == 1, "the guest reached the host's loopback"
    finally:
        listener.close()


def test_two_runs_at_once_on_one_fresh_cache_both_pass(tmp_path, results):
    """A cache holding only the built artifacts: both runs choose the accelerator (probing
    KVM where it may work), create scratch directories and sweep at the same time."""
    cache = tmp_path / "cache"
    warm = Cache().root
    for kind in ("keys", "rootfs", "kernels"):
        shutil.copytree(warm / kind, cache / kind, copy_function=os.link)
    env = dict(os.environ, VFIO_LAB_CACHE=str(cache))
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "lab", "run", "-q", *ONE_TEST, "--results", str(results / n)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in ("a", "b")
    ]
    outputs = [run.communicate(timeout=900) for run in runs]
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, out + err
    for n in ("a", "b"):
        (cell,) = summary(results / n)["cells"]
        assert cell["counts"]["pass"] == 1 and cell["verdict"] == "pass", cell
    # One probe for both runs where KVM is worth probing; none on a host without it (a
    # CPU without vmx/svm, as CI's): two processes racing on one memo is unit-tested.
    probed = 0 if kvm_unusable() else 1
    assert len(list((cache / "kvm-probe").glob("*.json"))) == probed
    assert list((cache / "tmp").iterdir()) == []
    assert not Cache(cache).sockets.exists(), "the runs' sockets directory outlived them"


def start_shell(*extra: str) -> subprocess.Popen[str]:
    """`vfio-lab shell -- sleep 600`, returned once the guest runs the command."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab", "shell", *extra, "--", "sh", "-c", "echo up; sleep 600"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        # A script's background job has SIGINT ignored; the lab must see Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "up", "the guest never ran the command"
    return proc


def wait_until(check, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_sigkill_leaves_scratch_that_the_next_run_sweeps(results):
    before, qemus = vm_scratch(), lab_qemus()
    proc = start_shell("-q", "--no-bind")
    left = vm_scratch() - before
    assert {name.split("-")[0] for name in left} == {"vm", "shell"}, left
    proc.kill()
    proc.wait(timeout=10)
    # The kernel kills QEMU with its parent (setpriv --pdeathsig); no `finally` ran.
    wait_until(lambda: not lab_qemus() - qemus, 10, "QEMU outlived a lab killed by SIGKILL")
    assert left <= vm_scratch(), "nothing should have cleaned up after a SIGKILL"
    done = lab("shell", "-q", "--no-bind", "--", "true")
    assert done.returncode == 0, done.stderr
    assert not left & vm_scratch(), "the next run left the dead run's scratch behind"


def test_a_second_ctrl_c_while_stopping_still_stops_qemu(results):
    qemus = lab_qemus()
    proc = start_shell("-q", "--no-bind")
    assert lab_qemus() - qemus, "QEMU should be running"
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    wait_until(lambda: not lab_qemus() - qemus, 10, "QEMU outlived two Ctrl-Cs")
