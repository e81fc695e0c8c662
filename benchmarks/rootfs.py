#!/usr/bin/env python3
"""The guest root filesystem built three ways, side by side: JSON naming the machine.

  python benchmarks/rootfs.py --user labuser     # as root: all three
  python benchmarks/rootfs.py --one OUT.json     # one build as whoever runs it (the lab's way)

1. `debootstrap`, as root: the builder the lab used before mmdebstrap (same packages,
   mirror and lab additions), for the record;
2. the lab's build (mmdebstrap --mode=unshare) as root;
3. the lab's build as the normal user `--user` (root of a namespace of its own), started
   through runuser with the user's own python3 and a scratch cache that user owns.

Each tree's paths, modes and owners (as the guest sees them) are compared with the lab's
build as root, as tests/integration/test_rootfs_modes.py does.

Each from an empty scratch cache (apt's host cache plays no part: every builder downloads
the packages); times for the tree (builder and the lab's additions) and the image (mkfs.ext4
and qemu-img). The installed packages of each tree are compared with the lab's as root.
No accelerator is involved: no guest boots.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import REPO, machine, write_report

from lab.artifacts import rootfs
from lab.artifacts.apt import host_mirror
from lab.artifacts.keys import ensure_keys
from lab.artifacts.userns import namespace_root
from lab.core.cache import Cache
from lab.core.progress import SILENT
from lab.model.arches import ARCHES, host_arch

NATIVE = ARCHES[host_arch()]  # the builds compared are the host arch's


def installed(root: Path) -> list[str]:
    status = (root / "var" / "lib" / "dpkg" / "status").read_text()
    return sorted(
        stanza.split("\n", 1)[0].removeprefix("Package: ")
        for stanza in status.split("\n\n")
        if stanza.startswith("Package: ") and "Status: install ok installed" in stanza
    )


def debootstrap_tree(root: Path, log: Path) -> None:
    argv = [
        "debootstrap", "--variant=minbase", f"--include={','.join(rootfs.packages())}",
        rootfs.SUITE, str(root), host_mirror(),
    ]  # fmt: skip
    with log.open("a") as out:
        subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=True)


def one(work: Path, make_tree: Callable[[Path, list[str], Path], None] | None) -> dict[str, Any]:
    """One build into `work`: the lab's tree builder unless `make_tree` is given."""
    keys = ensure_keys(Cache(work / "cache"))
    as_root = namespace_root()
    root, log = work / "root", work / "build.log"
    started = time.monotonic()
    try:
        if make_tree is None:
            rootfs.build_tree(root, keys, NATIVE, as_root, log, SILENT)
        else:
            make_tree(root, as_root, log)
            rootfs.configure(root, keys)
        tree_s = time.monotonic() - started
        packages = installed(root)
        listing = rootfs.tree_listing(root)
        started = time.monotonic()
        rootfs.pack_image(root, work / "base.qcow2", as_root, log)
        image_s = time.monotonic() - started
    finally:
        rootfs.remove_tree(root, as_root, log)
    return {
        "uid": os.geteuid(),
        "tree_s": round(tree_s, 1),
        "image_s": round(image_s, 1),
        "total_s": round(tree_s + image_s, 1),
        "packages": packages,
        "listing": listing,
    }


def as_user(user: str, work: Path) -> dict[str, Any]:
    shutil.chown(work, user)
    out = work / "one.json"
    subprocess.run(
        ["runuser", "-u", user, "--", "env", f"PYTHONPATH={REPO}", f"HOME={work}",
         "python3", str(Path(__file__).resolve()), "--one", str(out)],
        cwd=work, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--user", help="the normal user of the third build (run as root)")
    ap.add_argument("--one", type=Path, help="one build as the invoking user, into this JSON")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory(dir=args.one.parent) as tmp:
            args.one.write_text(json.dumps(one(Path(tmp), None)))
        return 0
    if os.geteuid() != 0 or not args.user:
        ap.error("run as root with --user NAME (or --one OUT.json as anyone)")
    with tempfile.TemporaryDirectory(prefix="vfio-lab-bench-rootfs-") as tmp:
        base = Path(tmp)
        base.chmod(0o711)  # the user's build reaches its own directory inside
        runs = {}
        for name, build in (
            ("debootstrap_root", lambda w: one(w, lambda r, _, log: debootstrap_tree(r, log))),
            ("mmdebstrap_root", lambda w: one(w, None)),
            ("mmdebstrap_user", lambda w: as_user(args.user, w)),
        ):
            print(f"rootfs: {name}", file=sys.stderr)
            work = base / name
            work.mkdir()
            runs[name] = build(work)
            print(f"rootfs: {name}: {runs[name]['total_s']} s", file=sys.stderr)
    lab_packages = set(runs["mmdebstrap_root"]["packages"])
    lab_listing = {tuple(e) for e in runs["mmdebstrap_root"]["listing"]}
    for r in runs.values():
        listing = {tuple(e) for e in r.pop("listing")}
        # Paths, modes and owners (as the guest sees them) that differ from the lab's as root.
        r["listing_differences"] = len(listing ^ lab_listing)
        r["listing_differences_first"] = sorted(listing ^ lab_listing)[:20]
        ours = set(r.pop("packages"))
        r["packages"] = len(ours)
        r["packages_not_in_lab_root_build"] = sorted(ours - lab_packages)
        r["lab_root_packages_missing"] = sorted(lab_packages - ours)
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "accelerator": "none (no guest boots)",
        "mirror": host_mirror(),
        "suite": rootfs.SUITE,
        "runs": runs,
    }
    write_report(report, args.out, "rootfs-")
    return 0


if __name__ == "__main__":
    sys.exit(main())
