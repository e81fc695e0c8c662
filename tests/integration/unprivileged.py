"""A normal user for the real-VM tests that root runs (`.ci/run` runs as root): made if
absent, with subordinate ids, its own copy of the checkout, and commands run as it."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lab.artifacts.userns import Account, subids
from tests.conftest import REPO
from tests.integration.conftest import copy_source

USER = os.environ.get("VFIO_LAB_TEST_USER", "vfio-lab-user")
# What the user's commands see of the test's environment: a mirror, proxies, the tag by
# which the leak checks find the lab's QEMUs.
PASSED = ("VFIO_LAB_MIRROR", "VFIO_LAB_TEST_TAG", "http_proxy", "https_proxy", "no_proxy",
          "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "PIP_INDEX_URL")  # fmt: skip


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: Path

    def run(
        self, argv: list[str], cwd: Path, timeout: float = 1800
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            **{k: os.environ[k] for k in PASSED if k in os.environ},
        }
        # Root becomes the user; a normal user running the suite is the user already.
        become = ["runuser", "-u", self.name, "--"] if os.geteuid() != self.uid else []
        return subprocess.run(
            [*become, "env", "-i", *[f"{k}={v}" for k, v in env.items()], *argv],
            cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip


def unprivileged_user(scratch: Path) -> User:
    """The test's normal user. When the suite runs as a normal user, that user, with a home
    of its own under `scratch` (its real cache is left alone). As root (`.ci/run`), a user
    made now if absent, then set up as the README's quick start does (`sudo
    ./scripts/setup-host.sh`: subordinate ids, group kvm where /dev/kvm has it)."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        home = scratch / "home"
        home.mkdir()
        return User(me.pw_name, me.pw_uid, me.pw_gid, home)
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", USER], check=True)
    entry = pwd.getpwnam(USER)
    user = User(USER, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))
    subprocess.run(
        [REPO / "scripts" / "setup-host.sh"], env=dict(os.environ, SUDO_USER=USER), check=True
    )
    assert not subids(Account(user.name, user.uid)).lacking, "setup-host.sh gave it no subids"
    return user


def fresh_checkout(user: User) -> Path:
    """A copy of this checkout that the user owns, in its home, made anew."""
    dest = user.home / "vfio-lab"
    shutil.rmtree(dest, ignore_errors=True)
    copy_source(dest)
    chown_tree(dest, user)
    return dest


def chown_tree(root: Path, user: User) -> None:
    os.chown(root, user.uid, user.gid)
    for path in root.rglob("*"):
        os.lchown(path, user.uid, user.gid)


def not_owned_by(user: User, *roots: Path) -> list[str]:
    """Every file under `roots` that is not the user's (root's, or a subordinate id's)."""
    return [
        f"{path} ({path.lstat().st_uid}:{path.lstat().st_gid})"
        for root in roots
        if root.exists()
        for path in [root, *root.rglob("*")]
        if path.lstat().st_uid != user.uid
    ]
