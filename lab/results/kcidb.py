"""A run as KCIDB JSON (schema 5), for KernelCI's results database: `kcidb-submit` reads it.

- one **checkout** per kernel source a cell ran (Debian's package and version, a commit
  plus a diff hash, patches: its identity), with the commit hash where there is one;
- one **build** per cell: its config (fragments and config values), the kernel release,
  the build time where this run or an earlier one built it, and an infrastructure
  error as the build's log excerpt when the cell could not run;
- one **test** per test record: its path (the suite, then the test id, dots between),
  status, and the cell as its environment.

KCIDB has no "expected failure": an xfail is a FAIL whose `misc` says it was expected
(with the reason and link), an xpass a PASS whose `misc` says it was not.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from lab.results.records import TestRecord
from lab.results.rundir import CellData, RunData, run_started

SCHEMA = {"major": 5, "minor": 3}
DEFAULT_ORIGIN = "vfio_lab"
STATUS = {
    "pass": "PASS",
    "fail": "FAIL",
    "error": "ERROR",
    "notrun": "MISS",
    "skip": "SKIP",
    "xfail": "FAIL",
    "xpass": "PASS",
}
EXCERPT_MAX = 16384
_PATH_CHARS = re.compile(r"[^a-zA-Z0-9_-]+")
_COMMIT = re.compile(r"^git:([0-9a-f]{40})(?:\+(\w+))?$")


def export(run: RunData, origin: str = DEFAULT_ORIGIN) -> dict[str, Any]:
    started = run_started(run)
    checkouts: dict[str, dict[str, Any]] = {}
    builds, tests = [], []
    for cell in run.cells:
        checkout = _checkout(cell, origin, started)
        checkouts.setdefault(checkout["id"], checkout)
        build = _build(cell, run, checkout["id"], origin, started)
        builds.append(build)
        tests += [_test(cell, rec, run, build["id"], origin, started) for rec in cell.records]
    return {
        "version": SCHEMA,
        "checkouts": list(checkouts.values()),
        "builds": builds,
        "tests": tests,
    }


def _id(origin: str, *parts: str) -> str:
    return f"{origin}:" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _checkout(cell: CellData, origin: str, started: str | None) -> dict[str, Any]:
    identity = str(cell.summary.get("kernel_identity") or cell.summary.get("kernel"))
    commit = _COMMIT.match(identity)
    patched = "+patches:" in identity or bool(commit and commit.group(2))
    return _drop_none(
        {
            "id": _id(origin, "checkout", identity),
            "origin": origin,
            "tree_name": str(cell.summary.get("kernel")),
            "git_commit_hash": commit.group(1) if commit else None,
            "patchset_hash": hashlib.sha256(identity.encode()).hexdigest() if patched else "",
            "comment": identity,
            "start_time": started,
            "valid": True,
            "misc": {"identity": identity},
        }
    )


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
    if rec.outcome == "xfail":
        misc["expected_failure"] = rec.expectation
    if rec.outcome == "xpass":
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
