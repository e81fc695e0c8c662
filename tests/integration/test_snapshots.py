"""Snapshots for real: made on a machine's first boot, restored after, made again when
damaged or when the machine changes, and every restored guest's clock and entropy its own.

Each test boots a machine of its own (a random word on its kernel command line is part of
the snapshot key), so it makes its snapshot whatever the cache holds, and removes it after.
"""

from __future__ import annotations

import re
import secrets
import shutil
import time
import uuid
from pathlib import Path

import pytest

from lab.core.cache import Cache
from tests.conftest import lab
from tests.integration.conftest import summary

pytestmark = pytest.mark.vm

SNAPSHOT = re.compile(r"(saved snapshot|restoring snapshot) ([0-9a-f]{16})")
PROBE = "date +%s; cat /proc/sys/kernel/random/uuid; cat /proc/cmdline"


@pytest.fixture
def machine(tmp_path: Path):
    """A scenario for a machine no other test boots; its snapshots are removed after."""
    word = f"vfio_lab_test={secrets.token_hex(4)}"
    scenario = tmp_path / "snap.yaml"
    scenario.write_text(f"machine:\n  memory: 2G\n  cmdline: [mitigations=off, {word}]\n")
    made: set[str] = set()
    yield scenario, word, made
    for key in made:
        shutil.rmtree(Cache().entry("snapshots", key), ignore_errors=True)


def shell(scenario: Path, made: set[str], *extra: str) -> tuple[str, list[str], dict[str, str]]:
    """`vfio-lab shell` the probe: its output lines, and what it said of snapshots."""
    done = lab("shell", str(scenario), "--no-bind", *extra, "--", "sh", "-c", PROBE)
    assert done.returncode == 0, done.stderr
    said = {what.split()[0]: key for what, key in SNAPSHOT.findall(done.stderr)}
    made.update(said.values())
    return done.stderr, done.stdout.splitlines(), said


def test_made_once_restored_after_with_fresh_clock_and_entropy(machine, results) -> None:
    scenario, word, made = machine
    _, first, said = shell(scenario, made)
    key = said["saved"]
    assert said == {"saved": key}, "the first boot is saved on the way and goes on"
    time.sleep(2)
    err, second, said = shell(scenario, made)
    assert said == {"restoring": key}, err
    _, third, _ = shell(scenario, made)
    assert word in second[2].split()
    # The guest's clock is the host's now, not the saved one's.
    assert abs(int(second[0]) - time.time()) < 30
    assert int(second[0]) >= int(first[0]) + 2
    # Every restore starts from one saved entropy pool: without the reseed two restores
    # would draw the same "random" UUIDs.
    assert uuid.UUID(second[1]) != uuid.UUID(third[1])
    cold_err, cold, said = shell(scenario, made, "--no-snapshot")
    assert said == {} and "booting" in cold_err and word in cold[2].split()


def test_a_damaged_snapshot_is_made_again_with_a_message(machine, results) -> None:
    scenario, _, made = machine
    _, _, said = shell(scenario, made)
    state = Cache().entry("snapshots", said["saved"]) / "state"
    with state.open("r+b") as f:  # same size: only QEMU's load can tell
        f.seek(state.stat().st_size // 2)
        f.write(secrets.token_bytes(1 << 20))
    err, out, again = shell(scenario, made)
    assert f"snapshot {said['saved']} did not restore" in err, err
    assert again == {"saved": said["saved"], "restoring": said["saved"]}
    assert len(out) == 3


def test_a_changed_machine_gets_a_snapshot_of_its_own(machine, results) -> None:
    scenario, word, made = machine
    _, _, said = shell(scenario, made)
    scenario.write_text(scenario.read_text().replace("memory: 2G", "memory: 3G"))
    _, out, other = shell(scenario, made)
    assert "saved" in other and other["saved"] != said["saved"]
    assert word in out[2].split()


def test_a_run_records_its_phases_cold_and_restored(machine, results) -> None:
    scenario, _, made = machine
    cold = {"firmware+kernel", "userspace", "ssh", "setup"}
    for extra, phases, how in (
        (["--no-snapshot"], cold, "none: --no-snapshot"),
        ([], cold | {"snapshot_save"}, "saved "),
        ([], {"restore", "ssh", "resume"}, "restored "),
    ):
        done = lab("run", str(scenario), "--results", str(results), "-k", "bar0", *extra)
        assert done.returncode == 0, done.stdout + done.stderr
        (cell,) = summary(results)["cells"]
        made.update(re.findall(r"[0-9a-f]{16}", cell["snapshot"]))
        assert phases | {"prepare", "qemu_start", "payload", "teardown"} <= set(cell["phases_s"])
        assert all(v >= 0 for v in cell["phases_s"].values())
        assert cell["snapshot"].startswith(how), cell["snapshot"]
