"""`vfio-lab cache list|du|prune|clean`, and the ceiling every command that builds keeps."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TextIO

from lab.core.cache import KINDS, Cache
from lab.core.cachegc import (
    CEILING_ENV,
    Pruned,
    Usage,
    ceiling,
    format_size,
    in_use,
    measured,
    parse_age,
    parse_size,
    prune,
)
from lab.core.errors import UsageError
from lab.core.exitcodes import EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cache = sub.add_parser(
        "cache", help="what the artifact cache holds, and keeping it within a size"
    )
    commands = cache.add_subparsers(dest="cache_command", required=True)
    commands.add_parser(
        "list", help="every entry, least recently used first: kind, key, size, last use, what"
    ).set_defaults(func=cmd_list)
    commands.add_parser("du", help="disk used per kind of entry, and in all").set_defaults(
        func=cmd_du
    )
    p = commands.add_parser(
        "prune",
        help="remove entries least recently used first, never one a running lab holds",
    )
    p.add_argument(
        "--max-size",
        type=_argument(parse_size),
        metavar="SIZE",
        help="until the entries take at most SIZE (60G, 500M)",
    )
    p.add_argument(
        "--older-than",
        type=_argument(parse_age),
        metavar="AGE",
        help="every entry last used more than AGE ago (7d, 12h)",
    )
    p.set_defaults(func=cmd_prune)
    clean = commands.add_parser("clean", help="remove every entry of one kind no lab holds")
    clean.add_argument("kind", choices=KINDS, metavar="KIND", help=f"one of: {', '.join(KINDS)}")
    clean.set_defaults(func=cmd_clean)


def _argument(parse: Callable[[str], float]) -> Callable[[str], float]:
    """A parser's ValueError as argparse's own usage error (exit 2, the flag named)."""

    def convert(text: str) -> float:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


def cmd_list(args: argparse.Namespace) -> int:
    cache = Cache()
    found, usage = measured(cache)
    print(f"{'KIND':11} {'KEY':16} {'SIZE':>7}  {'LAST USE':16}  MADE BY")
    for e in found:
        held = " (in use)" if in_use(cache, e) else ""
        print(
            f"{e.kind:11} {e.key:16} {format_size(e.size):>7}  {_when(e.last_use)}  "
            f"{e.made_by or '-'}{held}"
        )
    print(f"{len(found)} entries, {format_size(usage.total)} (see `vfio-lab cache du`)")
    return EXIT_OK


def cmd_du(args: argparse.Namespace) -> int:
    cache = Cache()
    found, usage = measured(cache)
    for kind in KINDS:
        mine = [e for e in found if e.kind == kind]
        count = f"{len(mine)} entr{'y' if len(mine) == 1 else 'ies'}"
        print(f"{kind:13} {format_size(sum(e.size for e in mine)):>7}  {count}")
    limit = ceiling()
    bound = f"ceiling {format_size(limit)}" if limit is not None else "no ceiling"
    print(f"{'entries':13} {format_size(usage.total):>7}  ({bound}, ${CEILING_ENV})")
    others = _others(cache)
    for name, size in others:
        print(f"{name:13} {format_size(size):>7}  (not an entry: never pruned)")
    total = usage.total + sum(size for _, size in others)
    print(f"{'total':13} {format_size(total):>7}  {cache.root} and the local build directories")
    return EXIT_OK


def _others(cache: Cache) -> list[tuple[str, int]]:
    """What else the cache root holds (ccache, the apt lists, kept overlays...), by name."""
    if not cache.root.is_dir():
        return []
    paths = sorted(p for p in cache.root.iterdir() if p.name not in KINDS)
    usage = Usage(paths)
    return [(p.name, usage.size(p)) for p in paths]


def cmd_prune(args: argparse.Namespace) -> int:
    if args.max_size is None and args.older_than is None:
        raise UsageError("cache prune: say what to remove: --max-size SIZE, --older-than AGE")
    cache = Cache()
    found, usage = measured(cache)
    _tell(prune(cache, found, usage, args.max_size, args.older_than, time.time()), sys.stdout)
    return EXIT_OK


def cmd_clean(args: argparse.Namespace) -> int:
    cache = Cache()
    found, usage = measured(cache, [args.kind])
    _tell(prune(cache, found, usage, max_size=0), sys.stdout)
    return EXIT_OK


def _tell(result: Pruned, out: TextIO) -> None:
    for e in result.removed:
        print(f"removed {e.name} {format_size(e.size)}", file=out)
    for e in result.in_use:
        print(f"kept {e.name} {format_size(e.size)}: a running lab holds it", file=out)
    print(f"the entries left take {format_size(result.total)}", file=out)


def keep_ceiling(cache: Cache, limit: int | None) -> None:
    """After a command that builds: the least recently used entries removed while the
    cache is over `limit` (None: no ceiling), each named on stderr. What this command used
    is still held (it is what the next run most likely needs), so it stays even over."""
    if limit is None:
        return
    found, usage = measured(cache)
    if usage.total <= limit:
        return
    print(
        f"vfio-lab: the cache ({format_size(usage.total)}) is over its ceiling "
        f"({CEILING_ENV}={format_size(limit)}); removing the least recently used entries:",
        file=sys.stderr,
    )
    _tell(prune(cache, found, usage, max_size=limit), sys.stderr)


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)) if stamp else "-"
