"""A run as KCIDB JSON (schema 5), for KernelCI's results database: `kcidb-submit` reads it.

- one **checkout** per kernel source a cell ran (Debian's package and version, a commit
  plus a diff hash, patches: its identity), with the base commit's hash where there is
  one (a patched `local:` tree too), `patchset_hash` as KCIDB defines it (sha256 over
  the patches' sha256 lines, in order, from the cell's provenance.json; "" for none;
  left out where uncommitted changes make it unknown) and `tree_name` only where the
  tree has a widely-recognized name (Debian's kernels; a local checkout has none);
- one **build** per cell: its config (fragments and config values), the kernel release,
  the build time where this run or an earlier one built it, and an infrastructure
  error as the build's log excerpt when the cell could not run;
- one **test** per test record: its path (the suite, then the test id, dots between),
  status, and the cell as its environment.

KCIDB has no "expected failure": an xfail is a FAIL whose `misc` says it was expected
(with the reason and link), an xpass a PASS whose `misc` says it was not.

No host path leaves the machine: the run's directory, each `local:` checkout and the
home directory are replaced in every exported string (`<run>`, `<local tree>`, `~`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from lab.core.errors import UsageError
from lab.results.outcomes import KCIDB_STATUS as STATUS
from lab.results.outcomes import XFAIL, XPASS
from lab.results.records import TestRecord
from lab.results.rundir import CellData, RunData, run_started

SCHEMA = {"major": 5, "minor": 3}
DEFAULT_ORIGIN = "vfio_lab"
EXCERPT_MAX = 16384
_PATH_CHARS = re.compile(r"[^a-zA-Z0-9_-]+")
_COMMIT = re.compile(r"^git:(?P<commit>[0-9a-f]{40})(?P<dirty>\+(?!patches:)\w+)?")
PATCHED = "+patches:"  # lab.artifacts.patches: a tree with the lab's or the scenario's patches
# Kernel sources whose tree has a widely-recognized name (KCIDB's tree_name).
TREE_NAMES = {"debian": "debian", "debian-stock": "debian"}
LOCAL = "local:"


def export(run: RunData, origin: str = DEFAULT_ORIGIN) -> dict[str, Any]:
    started = run_started(run)
    checkouts: dict[str, dict[str, Any]] = {}
    builds, tests = [], []
    for cell in run.cells:
        checkout = _checkout(cell, _patch_hashes(run, cell), origin, started)
        checkouts.setdefault(checkout["id"], checkout)
        build = _build(cell, run, checkout["id"], origin, started)
        builds.append(build)
        tests += [_test(cell, rec, run, build["id"], origin, started) for rec in cell.records]
    data: dict[str, Any] = _scrub(
        {
            "version": SCHEMA,
            "checkouts": list(checkouts.values()),
            "builds": builds,
            "tests": tests,
        },
        _host_paths(run),
    )
    return data


def _id(origin: str, *parts: str) -> str:
    return f"{origin}:" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _checkout(
    cell: CellData, patches: list[str], origin: str, started: str | None
) -> dict[str, Any]:
    identity = str(cell.summary.get("kernel_identity") or cell.summary.get("kernel"))
    commit = _COMMIT.match(identity)
    dirty = bool(commit and commit.group("dirty"))
    source = str(cell.summary.get("kernel")).partition(":")[0]
    return _drop_none(
        {
            "id": _id(origin, "checkout", identity),
            "origin": origin,
            "tree_name": TREE_NAMES.get(source),
            "git_commit_hash": commit.group("commit") if commit else None,
            # Uncommitted changes are a patch whose file the run did not keep: unknown.
            "patchset_hash": None if dirty else patchset_hash(patches),
            "comment": identity,
            "start_time": started,
            "valid": True,
            "misc": _drop_none(
                {"identity": identity, "source": source, "uncommitted_changes": dirty or None}
            ),
        }
    )


def patchset_hash(patch_sha256s: list[str]) -> str:
    """KCIDB's patchset hash: sha256 over the patches' sha256 hashes, each newline-
    terminated, in order (`sha256sum *.patch | cut -c-64 | sha256sum`); "" for none."""
    if not patch_sha256s:
        return ""
    return hashlib.sha256("".join(f"{h}\n" for h in patch_sha256s).encode()).hexdigest()


def _patch_hashes(run: RunData, cell: CellData) -> list[str]:
    """The sha256 of each patch the cell's kernel was built with, in order, as its
    provenance.json recorded them; a patched kernel without that record is refused."""
    identity = str(cell.summary.get("kernel_identity") or "")
    if PATCHED not in identity:
        return []
    path = run.dir / Path(str(cell.summary.get("dir", ""))).name / "provenance.json"
    try:
        patches = json.loads(path.read_text())["kernel"]["patches"]
        hashes = [str(p["sha256"]) for p in patches]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(
            f"{path}: unreadable or without kernel.patches[].sha256 ({e}); the patches of "
            f"{cell.name}'s kernel cannot be hashed for KCIDB"
        ) from None
    if not hashes:
        raise UsageError(f"{path}: no patches recorded, but {cell.name}'s kernel is patched")
    return hashes


def _host_paths(run: RunData) -> list[tuple[str, str]]:
    """Host paths and what stands for them, the longest first (a checkout under home is a
    checkout, not home)."""
    paths = {str(Path.home()): "~", str(run.dir.resolve()): "<run>", str(run.dir): "<run>"}
    for cell in run.cells:
        label = str(cell.summary.get("kernel"))
        if label.startswith(LOCAL):
            paths[label.removeprefix(LOCAL)] = "<local tree>"
    # A home of / would stand for every path: it names no one.
    return sorted(((p, s) for p, s in paths.items() if p != "/"), key=lambda kv: -len(kv[0]))


def _scrub(value: Any, paths: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        for path, stand_in in paths:
            value = value.replace(path, stand_in)
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, paths) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, paths) for v in value]
    return value


def _build(
    cell: CellData, run: RunData, checkout_id: str, origin: str, started: str | None
) -> dict[str, Any]:
    s = cell.summary
    error = s.get("infra_error")
    run_id = str(run.summary.get("run_id"))
    return _drop_none(
        {
            "id": _id(origin, "build", run_id, cell.name),
            "checkout_id": checkout_id,
            "origin": origin,
            "comment": cell.name,
            "start_time": started,
            "architecture": "x86_64",
            "config_name": cell.name,
            "duration": s.get("kernel_build_s"),
            "status": "PASS" if s.get("kernel_release") else ("ERROR" if error else "MISS"),
            "log_excerpt": str(error)[:EXCERPT_MAX] if error else None,
            "misc": _drop_none({"release": s.get("kernel_release"), "cell": cell.name}),
        }
    )


def kcidb_path(rec: TestRecord) -> str:
    """The suite, then the test id's own dotted parts, each cut to KCIDB's characters."""
    parts = [rec.suite, *rec.id.split(".")]
    return ".".join(p for p in (_PATH_CHARS.sub("_", part).strip("_") for part in parts) if p)


def _test(
    cell: CellData,
    rec: TestRecord,
    run: RunData,
    build_id: str,
    origin: str,
    started: str | None,
) -> dict[str, Any]:
    run_id = str(run.summary.get("run_id"))
    misc: dict[str, Any] = {"outcome": rec.outcome, "test": rec.name}
    if rec.outcome == XFAIL:
        misc["expected_failure"] = rec.expectation
    if rec.outcome == XPASS:
        misc["unexpected_pass"] = rec.expectation
    if rec.diagnostics:
        misc["diagnostics"] = rec.diagnostics
    excerpt = "\n".join([rec.reason, *rec.kernel]).strip()
    return _drop_none(
        {
            "id": _id(origin, "test", run_id, cell.name, rec.name),
            "build_id": build_id,
            "origin": origin,
            "path": kcidb_path(rec),
            "status": STATUS[rec.outcome],
            "start_time": started,
            "environment": {
                "comment": cell.name,
                "misc": _drop_none(
                    {
                        "cell": cell.name,
                        "accelerator": run.summary.get("accelerator"),
                        "qemu": cell.summary.get("qemu_version"),
                        "kernel_release": cell.summary.get("kernel_release"),
                    }
                ),
            },
            "log_excerpt": excerpt[:EXCERPT_MAX] or None,
            "misc": misc,
        }
    )
