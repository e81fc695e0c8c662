"""Root of a user namespace of one's own: how a normal user builds the root filesystem.

mmdebstrap, mkfs.ext4 and the removal of the tree run under `unshare`, which maps the
invoking user to root and the user's subordinate ids (/etc/subuid, /etc/subgid) to 1..65536.
Inside, the tree has the owners a root-built one has; outside, its root-owned files are
the user's own (the image mkfs.ext4 writes included), the others belong to subordinate ids.
As root nothing is wrapped: the same commands run as they are.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lab.core.accounts import user_name
from lab.core.errors import MissingPrerequisite

SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")
# Namespace ids 1..65536: every id a Debian package may give a file, nobody (65534) included.
NEEDED = 65536
# Where Debian's useradd starts handing out ranges (SUB_UID_MIN in /etc/login.defs).
FIRST_START = 100000


@dataclass(frozen=True)
class IdRange:
    start: int
    count: int


@dataclass(frozen=True)
class Account:
    name: str
    uid: int


def with_sudo(command: str) -> str:
    """A command that changes the host, as this user gives it: with sudo unless root."""
    return command if os.geteuid() == 0 else f"sudo {command}"


def current_account() -> Account:
    uid = os.geteuid()
    return Account(user_name(uid), uid)


def _ranges(text: str) -> Iterator[tuple[str, IdRange]]:
    """(owner, range) of each well-formed line of /etc/subuid's (or /etc/subgid's) text."""
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
            yield fields[0], IdRange(int(fields[1]), int(fields[2]))


def subordinate(text: str, account: Account) -> IdRange | None:
    """The account's first range in /etc/subuid's (or /etc/subgid's) text, by name or uid,
    as newuidmap reads it; None when it has none."""
    owners = (account.name, str(account.uid))
    return next((found for owner, found in _ranges(text) if owner in owners), None)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


@dataclass(frozen=True)
class SubIds:
    """An account's subordinate ids, as /etc/subuid and /etc/subgid give them now."""

    uids: IdRange | None
    gids: IdRange | None
    lacking: list[str]  # what they lack for a namespace build: a line per file
    fix: str  # the one command that gives the account ranges no one else has

    def ranges(self) -> tuple[IdRange, IdRange] | None:
        """(uids, gids) when they lack nothing."""
        if self.lacking or self.uids is None or self.gids is None:
            return None
        return self.uids, self.gids


def subids(account: Account, subuid: Path = SUBUID, subgid: Path = SUBGID) -> SubIds:
    """The account's ranges, each file read once."""
    texts = [_read(subuid), _read(subgid)]
    found = [subordinate(text, account) for text in texts]
    why = []
    for path, ids in zip((subuid, subgid), found, strict=True):
        if ids is None:
            why.append(f"{path} has no range for {account.name}")
        elif ids.count < NEEDED:
            why.append(f"{path} gives {account.name} {ids.count} ids, fewer than {NEEDED}")
    start = free_start(*texts)
    free = f"{start}-{start + NEEDED - 1}"
    fix = f"sudo usermod --add-subuids {free} --add-subgids {free} {account.name}"
    return SubIds(found[0], found[1], why, fix)


def free_start(*texts: str) -> int:
    """The first start at or past FIRST_START after every range the files give anyone."""
    return max([FIRST_START, *(r.start + r.count for t in texts for _, r in _ranges(t))])


def namespace_root(subuid: Path = SUBUID, subgid: Path = SUBGID) -> list[str]:
    """The argv prefix that runs a command as root of the user's own namespace (nothing
    as root). MissingPrerequisite, with the fix, when the user has no subordinate ids."""
    account = current_account()
    if account.uid == 0:
        return []
    for tool in ("newuidmap", "newgidmap"):
        if shutil.which(tool) is None:
            raise MissingPrerequisite(tool, with_sudo("apt-get install uidmap"))
    uids, gids = subordinate_ranges(account, subuid, subgid)
    # util-linux 2.38's order (outer,inner,count), which later versions still accept.
    return [
        "unshare", "--map-root-user",
        f"--map-users={uids.start},1,{NEEDED}", f"--map-groups={gids.start},1,{NEEDED}",
        "--",
    ]  # fmt: skip


def subordinate_ranges(
    account: Account, subuid: Path = SUBUID, subgid: Path = SUBGID
) -> tuple[IdRange, IdRange]:
    """The account's uid and gid ranges; MissingPrerequisite, with the fix, if either lacks."""
    ids = subids(account, subuid, subgid)
    if (ranges := ids.ranges()) is None:
        raise MissingPrerequisite(
            "; ".join(ids.lacking) + " (building the root filesystem as a user needs them)",
            ids.fix,
        )
    return ranges


def inner_id(host_id: int, own: int, sub: IdRange) -> int | None:
    """The namespace id that `namespace_root` gives a host id; None for one it does not map."""
    if host_id == own:
        return 0
    if sub.start <= host_id < sub.start + NEEDED:
        return host_id - sub.start + 1
    return None
