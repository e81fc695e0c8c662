"""A normal user's root filesystem is root's: the same paths, modes and owners.

Marked `vm` with the real-VM tests: it builds two root filesystem trees with the real
mmdebstrap (minutes, and the network), though it boots nothing. It compares the trees
before mkfs.ext4, which packs whatever the tree holds.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from lab.artifacts import rootfs
from lab.artifacts.keys import ensure_keys
from lab.core.cache import Cache
from lab.core.progress import SILENT
from lab.model.arches import ARCHES, host_arch
from tests.integration.unprivileged import chown_tree, fresh_checkout, unprivileged_user

pytestmark = pytest.mark.vm

# Run by the user, with its own python3, in its own copy of the checkout: the tree made
# as the lab makes it, and its listing as the guest will see it, for root to compare.
AS_USER = """
import json, sys
from pathlib import Path
from lab.artifacts import rootfs
from lab.artifacts.keys import ensure_keys
from lab.artifacts.userns import namespace_root
from lab.core.cache import Cache
from lab.core.progress import SILENT
from lab.model.arches import ARCHES, host_arch
work = Path(sys.argv[1])
as_root = namespace_root()
assert as_root, "the user's build ran unwrapped"
try:
    keys = ensure_keys(Cache(work / "cache"))
    rootfs.build_tree(work / "tree", keys, ARCHES[host_arch()], as_root, work / "log", SILENT)
    (work / "listing.json").write_text(json.dumps(rootfs.tree_listing(work / "tree")))
finally:
    rootfs.remove_tree(work / "tree", as_root, work / "log")
"""


def test_a_user_builds_the_tree_root_builds(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("builds root's tree to compare: needs root (`.ci/run` runs as root)")
    user = unprivileged_user(tmp_path)
    checkout = fresh_checkout(user)
    work = user.home / "rootfs-modes"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    chown_tree(work, user)
    done = user.run(["python3", "-c", AS_USER, str(work)], cwd=checkout)
    assert done.returncode == 0, done.stdout + done.stderr + (work / "log").read_text()
    theirs = [tuple(e) for e in json.loads((work / "listing.json").read_text())]
    assert not (work / "tree").exists(), "the user's tree outlived its build"

    tree = tmp_path / "tree"
    try:
        keys = ensure_keys(Cache(tmp_path / "cache"))
        rootfs.build_tree(tree, keys, ARCHES[host_arch()], [], tmp_path / "log", SILENT)
        ours = [tuple(e) for e in rootfs.tree_listing(tree)]
    finally:
        rootfs.remove_tree(tree, [], tmp_path / "log")
    shutil.rmtree(work)

    differ = sorted(set(ours) ^ set(theirs))
    assert not differ, f"{len(differ)} paths differ (path, mode, uid, gid): {differ[:20]}"
    # Not a comparison of two empty or all-root trees: what the lab adds is there, and
    # owners other than root survived the user's namespace.
    by_path = {e[0]: e for e in theirs}
    assert by_path["etc/ssh/ssh_host_ed25519_key"][1:] == (stat.S_IFREG | 0o600, 0, 0)
    assert by_path["usr/sbin/lab-init"][2:] == (0, 0)  # /sbin is a link to usr/sbin
    assert any(gid not in (0, None) for _, _, _, gid in theirs), "no file of a group but root"
    assert all(uid is not None and gid is not None for _, _, uid, gid in theirs)
