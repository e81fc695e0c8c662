#!/usr/bin/env python3
"""Where a VM's seconds go, and what snapshots and incremental builds save: JSON naming
the machine and the accelerator.

  python benchmarks/speed.py                  # shell and phases (about 3 min)
  python benchmarks/speed.py --matrix         # + a two-cell matrix, cold boots vs snapshots
  python benchmarks/speed.py --edit-loop      # + one-line edit in a local: tree to test-ready
  python benchmarks/speed.py --before REV     # + the matrix as commit REV ran it
  python benchmarks/speed.py --only tree_identity   # a local: 7.2 tree's identity, old and new

- shell: `vfio-lab shell --no-bind -- true` wall time, booting cold and from the snapshot;
- phases: `phases_s` of a one-test run (stock kernel), cold and restored;
- matrix: `vfio-lab run iommufd-compat` (2 cells, warm caches) with and without snapshots,
  and optionally as an older commit of the lab ran it (a worktree of REV);
- edit loop: a git checkout of Debian's 7.2 tree (hard links, edits break them), built
  once, then one line changed in drivers/vfio/pci/vfio_pci.c and `vfio-lab shell -- true`
  timed: the incremental build, the boot, both with and without a snapshot;
- tree identity: in such a checkout with one file edited and one untracked, the old
  `git diff HEAD` against the lab's `git status` + `git hash-object`, interleaved (first
  run, then the median of --repeat).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import REPO, VFIO_LAB, machine, timed_run, write_report

TREE_72 = "debian:7.2"
VFIO_PCI = Path("drivers/vfio/pci/vfio_pci.c")


def lab(*args: str, cwd: Path = REPO) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.monotonic()
    done = subprocess.run([*VFIO_LAB, *args], cwd=cwd, capture_output=True, text=True, check=False)
    return round(time.monotonic() - start, 2), done


def shell_true(scenario: str, repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for how, extra in (("cold", ["--no-snapshot"]), ("snapshot", [])):
        argv = ["shell", scenario, "-q", "--no-bind", *extra, "--", "true"]
        lab(*argv)  # warm-up: makes the snapshot if there is none
        walls = [lab(*argv)[0] for _ in range(repeat)]
        out[how] = {"wall_s": walls, "median_s": statistics.median(walls)}
    out["ratio_cold_to_snapshot"] = round(out["cold"]["median_s"] / out["snapshot"]["median_s"], 2)
    return out


def phases(tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for how, extra in (("cold", ["--no-snapshot"]), ("snapshot", [])):
        code, wall, summary = timed_run(dict(os.environ), tmp / how, "-k", "bar0", *extra)
        (cell,) = summary["cells"]
        out[how] = {
            "exit_code": code,
            "wall_s": wall,
            "phases_s": cell["phases_s"],
            "snapshot": cell["snapshot"],
        }
    return out


def matrix(tmp: Path, before: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for how, extra in (("cold", ["--no-snapshot"]), ("snapshot", []), ("snapshot_again", [])):
        code, wall, summary = timed_run(dict(os.environ), tmp / how, "iommufd-compat", *extra)
        out[how] = {
            "exit_code": code,
            "wall_s": wall,
            "cells": {c["name"]: c["phases_s"] for c in summary["cells"]},
        }
    if before:
        out["before"] = matrix_at(before, tmp)
        out["speedup_vs_before"] = round(
            1 - out["snapshot_again"]["wall_s"] / out["before"]["wall_s"], 3
        )
    return out


def matrix_at(rev: str, tmp: Path, scenario: str = "iommufd-compat") -> dict[str, Any]:
    """A scenario as commit `rev` of the lab ran it, from a worktree of that commit."""
    tree = tmp / f"before-{scenario}"
    subprocess.run(["git", "worktree", "add", "-f", str(tree), rev], cwd=REPO, check=True,
                   capture_output=True)  # fmt: skip
    try:
        results = tmp / f"before-results-{scenario}"
        wall, done = lab("run", scenario, "-q", "--results", str(results), cwd=tree)
        run = str((results / "latest").resolve())
        out = {"rev": rev, "exit_code": done.returncode, "wall_s": wall, "run": run}
        # An old commit may need what the host no longer has (ed6285e builds its root
        # filesystem with debootstrap): a failed run says why, not just its exit code.
        return out if done.returncode in (0, 1) else {**out, "stderr": done.stderr[-2000:]}
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)


def edit_loop(tmp: Path) -> dict[str, Any]:
    """A developer's checkout of 7.2: first build, then a one-line edit to test-ready."""
    tree = checkout_72(tmp)
    scenario = tmp / "local.yaml"
    scenario.write_text(f"kernels: ['local:{tree}']\nfragments: [iommufd]\n")
    out: dict[str, Any] = {}
    out["first_build_and_boot_s"], done = lab("shell", str(scenario), "-q", "--", "true")
    out["first_build_s"] = last_build_seconds()
    out["first_exit_code"] = done.returncode
    for how, extra in (("snapshot", []), ("cold", ["--no-snapshot"])):
        edit(tree / VFIO_PCI, how)
        wall, done = lab("shell", str(scenario), "-q", *extra, "--", "true")
        out[f"edit_to_done_{how}_s"] = wall
        out[f"edit_exit_code_{how}"] = done.returncode
        out[f"edit_build_{how}_s"] = last_build_seconds()
    return out


def tree_identity(tmp: Path, repeat: int) -> dict[str, Any]:
    from lab.artifacts.worktree import tree_state

    tree = checkout_72(tmp)
    # Upstream's .gitignore, less Debian's `/*` (which would hide the untracked file).
    ignore = tree / ".gitignore"
    kept = ignore.read_text().partition("# Debian packaging")[0]
    ignore.unlink()
    ignore.write_text(kept)
    subprocess.run(["git", "-C", tree, "-c", "user.email=b@b", "-c", "user.name=b", "commit",
                    "-qam", "upstream's .gitignore"], check=True)  # fmt: skip
    edit(tree / VFIO_PCI, "identity")
    (tree / VFIO_PCI).with_name("vfio_pci_new.c").write_text("int n;\n")

    def diff() -> None:
        subprocess.run(["git", "-C", tree, "diff", "HEAD"], capture_output=True, check=True)

    queries: dict[str, Callable[[], object]] = {
        "status_and_hash": lambda: tree_state(tree),
        "git_diff_head": diff,
    }
    walls: dict[str, list[float]] = {name: [] for name in queries}
    for _ in range(repeat + 1):  # interleaved: a shared host's load falls on both alike
        for name, query in queries.items():
            start = time.monotonic()
            query()
            walls[name].append(time.monotonic() - start)
    out: dict[str, Any] = {}
    for name, times in walls.items():
        out[f"{name}_first_s"] = round(times[0], 3)
        out[f"{name}_median_s"] = round(statistics.median(times[1:]), 3)
    out["changes"] = [c.path for c in tree_state(tree).changes]
    return out


def checkout_72(tmp: Path) -> Path:
    """A git checkout of the lab's unpacked 7.2 tree, hard-linked (no gigabytes copied)."""
    code = (
        "from lab.artifacts.kernels import KERNEL_BUILDERS; from lab.core.cache import Cache;"
        "from lab.model.kernelspec import parse_kernel_spec; s = parse_kernel_spec('debian:7.2');"
        "print(KERNEL_BUILDERS[s.source].tree(s, Cache(), print).path)"
    )
    src = Path(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.split()[-1])  # fmt: skip
    tree = tmp / "linux"
    tree.mkdir()
    for child in src.iterdir():
        if not child.name.startswith(".lab-build"):
            subprocess.run(["cp", "-al", child, tree], check=True)
    # -f: Debian's tree ignores everything at its top level (its .gitignore is for packaging).
    # gc.auto=0: the commit's 80k loose objects would start a repack in the background,
    # minutes of a core beside the builds and boots being timed (seen 2026-12-03).
    for args in (
        ["init", "-q"],
        ["config", "gc.auto", "0"],
        ["add", "-f", "-A"],
        ["commit", "-qm", "7.2"],
    ):
        subprocess.run(["git", "-c", "user.email=b@b", "-c", "user.name=b", *args], cwd=tree,
                       check=True, capture_output=True)  # fmt: skip
    return tree


def edit(path: Path, tag: str) -> None:
    """One line more in vfio_pci_probe; the file is replaced, never written through its
    hard link into the lab's pristine tree."""
    text = path.read_text().replace(
        "\tif (vfio_pci_is_denylisted(pdev))",
        f'\tpci_dbg(pdev, "vfio-lab benchmark edit {tag}\\n");\n\tif (vfio_pci_is_denylisted(pdev))',
        1,
    )
    path.unlink()
    path.write_text(text)


def last_build_seconds() -> float | None:
    """build_s of the most recently built kernel in the cache."""
    from lab.core.cache import Cache

    arts = sorted(
        (Cache().root / "kernels").glob("*/artifact.json"), key=lambda p: p.stat().st_mtime
    )
    return json.loads(arts[-1].read_text()).get("build_s") if arts else None


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeat", type=int, default=3, help="shell runs per way (default 3)")
    p.add_argument("--matrix", action="store_true", help="time a two-cell matrix too")
    p.add_argument("--before", metavar="REV", help="and the matrix as commit REV ran it")
    p.add_argument("--edit-loop", action="store_true", help="time a local: tree's edit loop")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SECTION",
        help="only these sections (shell_true, phases, matrix, edit_loop, tree_identity); repeatable",
    )
    p.add_argument("--out", type=Path, help="JSON output (default benchmarks/out/speed-*.json)")
    args = p.parse_args()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="vfio-lab-speed-") as tmp:
        sections: list[tuple[str, Callable[[], Any]]] = [
            ("shell_true", lambda: shell_true("quick", args.repeat)),
            ("phases", lambda: phases(Path(tmp))),
            ("accelerator", lambda: accel(Path(tmp))),
        ]
        if args.matrix or args.before:
            sections.append(("matrix", lambda: matrix(Path(tmp), args.before)))
        if args.edit_loop:
            sections.append(("edit_loop", lambda: edit_loop(Path(tmp))))
        if "tree_identity" in args.only:
            sections.append(("tree_identity", lambda: tree_identity(Path(tmp), args.repeat)))
        for name, measure in sections:
            if args.only and name not in args.only:
                continue
            print(f"measuring {name}", file=sys.stderr)
            try:
                report[name] = measure()
            except Exception as e:  # one broken section must not lose the others' figures
                report[name] = {"error": f"{type(e).__name__}: {e}"}
    write_report(report, args.out, "speed-")
    return 0


def accel(tmp: Path) -> str:
    return str(json.loads((tmp / "cold" / "latest" / "summary.json").read_text())["accelerator"])


if __name__ == "__main__":
    sys.exit(main())
