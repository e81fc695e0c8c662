"""The host's names for user and group ids, for messages and the commands they suggest."""

from __future__ import annotations

import grp
import pwd
from collections.abc import Callable
from typing import Any


def user_name(uid: int) -> str:
    """The account's name, or the uid as text when no passwd entry names it (a
    container's uid: /etc/subuid and chown take that too)."""
    return _name(pwd.getpwuid, uid)


def group_name(gid: int) -> str:
    """The group's name, or the gid as text when no group entry names it."""
    return _name(grp.getgrgid, gid)


def _name(lookup: Callable[[int], Any], id_: int) -> str:
    try:
        return str(lookup(id_)[0])
    except KeyError:
        return str(id_)
