"""`vfio-lab repro RUN_DIR/CELL`: the same cell again, from what the run recorded.

The cell's provenance.json names the scenario, the exact kernel (a pinned spec and
its digests), the root filesystem key, the payload digests and the pytest arguments.
Whatever cannot be had exactly as recorded is said, with why, before the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.core.cache import file_sha256, tree_digest
from lab.core.errors import UsageError
from lab.core.registry import Registry
from lab.model import scenario as scenario_mod
from lab.model.arches import ARCHES, DEFAULT_ARCH
from lab.model.kernelspec import CellConfig, parse_kernel_spec
from lab.model.scenario import Cell, Scenario
from lab.model.variants import IOMMU_MODELS
from lab.run.booter import Prepared
from lab.run.payload import RUNTIME_DIR

REQUIRED = (
    "cell",
    "scenario_file",
    "scenario_snapshot",
    "kernel",
    "rootfs_key",
    "payload",
    "pytest_args",
    "accelerator",
)
REQUIRED_KERNEL = ("resolved_spec", "identity", "vmlinuz_sha256", "initramfs_sha256")
REQUIRED_PAYLOAD = ("tests", "tests_digest", "runtime_digest")


@dataclass
class ReproPlan:
    cell: Cell
    record: dict[str, Any]
    scenario_file: Path
    pytest_args: list[str]
    notes: list[str]


def read_provenance(cell_dir: Path) -> dict[str, Any]:
    path = cell_dir / "provenance.json"
    if not cell_dir.is_dir():
        raise UsageError(f"{cell_dir}: no such directory")
    if not path.is_file():
        raise UsageError(f"{cell_dir} is not a cell directory of a run (it has no provenance.json)")
    try:
        record: dict[str, Any] = json.loads(path.read_text())
        missing = [k for k in REQUIRED if k not in record]
        missing += [f"kernel.{k}" for k in REQUIRED_KERNEL if k not in record.get("kernel", {})]
        missing += [f"payload.{k}" for k in REQUIRED_PAYLOAD if k not in record.get("payload", {})]
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path} is corrupt ({e})") from None
    if missing:
        raise UsageError(f"{path} is corrupt (missing {', '.join(missing)})")
    return record


def recorded_argv(cell_dir: Path) -> list[str]:
    """The QEMU command line the cell ran (empty when it never got to boot)."""
    path = cell_dir / "qemu-argv.json"
    try:
        argv = json.loads(path.read_text() or "[]")
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is unreadable or not JSON ({e})") from None
    if not isinstance(argv, list):
        raise UsageError(f"{path} is not a command line (a JSON list)")
    return [str(a) for a in argv]


def plan(cell_dir: Path, keyword: str | None) -> ReproPlan:
    record = read_provenance(cell_dir)
    notes: list[str] = []
    scenario_file = Path(record["scenario_file"])
    if not scenario_file.is_file():
        scenario_file = (cell_dir / record["scenario_snapshot"]).resolve()
        notes.append(f"the scenario file is gone; using the run's snapshot {scenario_file}")
    s: Scenario = scenario_mod.load(scenario_file)
    tests = Path(record["payload"]["tests"])
    if tests.is_dir():
        s.payload.tests = tests
    else:
        notes.append(f"the recorded payload {tests} is gone; using {s.payload_dir}")
    s.payload.args = []  # the recorded arguments already include the scenario's
    args = list(record["pytest_args"]) + (["-k", keyword] if keyword else [])
    recorded = record.get("config", {})
    config = CellConfig(
        fragments=tuple(recorded.get("fragments", [])),
        overrides=tuple((k, v) for k, v in recorded.get("overrides", [])),
    )
    patches = [_recorded_patch(cell_dir, p, notes) for p in record["kernel"].get("patches", [])]
    cell = Cell(
        name=record["cell"],
        kernel=parse_kernel_spec(record["kernel"]["resolved_spec"], tuple(patches)),
        scenario=s,
        config=config,
        # Records from before these were kept: every cell then was x86_64 behind intel-iommu.
        iommu=_recorded(cell_dir, record, "iommu", "intel-iommu", IOMMU_MODELS),
        arch=_recorded(cell_dir, record, "arch", DEFAULT_ARCH, ARCHES),
    )
    return ReproPlan(cell, record, scenario_file, args, notes)


def _recorded(
    cell_dir: Path, record: dict[str, Any], name: str, before: str, known: Registry[Any]
) -> str:
    """The machine's `name` (arch, IOMMU model) the run recorded, one of `known`."""
    value = record.get(name, before)
    if not isinstance(value, str) or value not in known:
        raise UsageError(f"{cell_dir / 'provenance.json'} is corrupt ({name} {value!r})")
    return value


def _recorded_patch(cell_dir: Path, patch: dict[str, str], notes: list[str]) -> Path:
    """The kernel patch the run applied: its file if unchanged, else the run's copy."""
    try:
        path, sha256, copy = Path(patch["file"]), patch["sha256"], cell_dir / patch["copy"]
    except (KeyError, TypeError) as e:
        raise UsageError(
            f"{cell_dir / 'provenance.json'} is corrupt (kernel.patches: {e})"
        ) from None
    if path.is_file() and file_sha256(path) == sha256:
        return path
    if not copy.is_file() or file_sha256(copy) != sha256:
        raise UsageError(f"the kernel patch {path} changed or is gone, and so is its copy {copy}")
    notes.append(f"the patch {path} changed or is gone; using the run's copy {copy}")
    return copy


def drift(record: dict[str, Any], prepared: Prepared, payload_dir: Path) -> list[str]:
    """Differences between what the run used and what this repro will boot, with the reason."""
    notes = []
    k = record["kernel"]
    if prepared.kernel.vmlinuz_sha256 != k["vmlinuz_sha256"]:
        notes.append(
            f"kernel image differs from the run's (sha256 {k['vmlinuz_sha256'][:12]} -> "
            f"{prepared.kernel.vmlinuz_sha256[:12]}): {k['identity']} was fetched again and "
            "the archive now serves a different build"
        )
    if file_sha256(prepared.kernel.initramfs) != k["initramfs_sha256"]:
        notes.append("initramfs differs from the run's: images/initramfs/ changed since the run")
    if prepared.image.key != record["rootfs_key"]:
        notes.append(
            f"root filesystem differs (key {record['rootfs_key']} -> {prepared.image.key}): "
            "images/rootfs/ or the lab's keys changed since the run"
        )
    p = record["payload"]
    if tree_digest(payload_dir) != p["tests_digest"]:
        notes.append(f"the guest tests in {payload_dir} changed since the run")
    if tree_digest(RUNTIME_DIR) != p["runtime_digest"]:
        notes.append(
            "the guest runtime (guest_tests/vfiolib, the TAP plugin) changed since the run"
        )
    q = record.get("qemu")
    now = (prepared.qemu.version, list(prepared.qemu.patches))
    if q is not None and (q["version"], q["patches"]) != now:
        notes.append(
            f"QEMU differs: {q['version']} with {q['patches'] or 'no patches'} -> "
            f"{now[0]} with {now[1] or 'no patches'} (machine.qemu: {q['choice']})"
        )
    return notes
