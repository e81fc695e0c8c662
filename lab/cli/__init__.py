"""The `vfio-lab` command line: the only place errors become messages and exit codes.

One module per group of commands; each registers its subcommands and their handlers.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from types import FrameType

from qemu.qmp import QMPError

from lab.cli import bisect, cache, ci, info, reports, repro, run, shell, vms
from lab.cli.common import Parser, exit_code
from lab.core.errors import HostIOError, LabError, UsageError
from lab.core.exitcodes import (
    EXIT_CRASH,
    EXIT_INFRA,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    for_bisect,
)

COMMAND_GROUPS = (run, shell, repro, bisect, vms, reports, ci, cache, info)
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports it
BUG_REPORT = "this is a bug in vfio-lab; please report it with the traceback above"
# The host's storage failed the lab: never a bug of the lab's, whatever it was writing.
STORAGE_FAULTS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="vfio-lab", description="Test VFIO and IOMMUFD in disposable QEMU guests.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return p


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwinds like Ctrl-C, so every `finally` stops its QEMU and removes its overlay.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `shell -- CMD ARGS...`: everything after `--` is the guest's, never the lab's.
    remote = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    try:
        args = build_parser().parse_args(own)
    except SystemExit as e:  # argparse's usage errors (2) and --help (0)
        code = e.code if isinstance(e.code, int) else EXIT_USAGE
        return for_bisect(code) if "--bisect" in own else code
    args.remote = remote
    signal.signal(signal.SIGTERM, _on_sigterm)
    # A background job of a script inherits SIGINT ignored; the lab's cleanup on an
    # interrupt must not depend on how it was started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return exit_code(args, _dispatch(args))


def _dispatch(args: argparse.Namespace) -> int:
    try:
        if args.remote and not getattr(args, "takes_remote", False):
            raise UsageError("only `vfio-lab shell` takes a command after --")
        code: int = args.func(args)
        # Output to a pipe is buffered: a reader that went away must be found out here,
        # not by the interpreter's last flush at exit.
        sys.stdout.flush()
        return code
    except LabError as e:
        print(f"vfio-lab: error: {e}", file=sys.stderr)
        return e.exit_code
    except QMPError as e:
        # QEMU's monitor failed us (a connect race, a dead QEMU): the lab's part, not a test's.
        print(f"vfio-lab: error: QMP: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_INFRA
    except BrokenPipeError:
        # The reader of our output went away (`vfio-lab list | head`): nothing to tell it,
        # and Python would complain again flushing stdout at exit: point it at /dev/null.
        # The status is a shell's for a command killed by SIGPIPE, never "all as expected".
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        # Everything is stopped by now, and the process is about to exit: one more Ctrl-C
        # must not turn exit 130 into a death by signal.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("vfio-lab: interrupted; guests stopped and overlays removed", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if isinstance(e, OSError) and e.errno in STORAGE_FAULTS:
            # A write the lab did not wrap (deep in a build, say) failed: the host's fault
            # all the same, told in one line like every other.
            print(f"vfio-lab: error: {unwrapped(e)}", file=sys.stderr)
            return EXIT_INFRA
        traceback.print_exc()
        print(f"vfio-lab: crashed: {BUG_REPORT}", file=sys.stderr)
        return EXIT_CRASH


def unwrapped(e: OSError) -> str:
    """A storage fault told as a HostIOError is, blaming the destination of a two-path call
    (a copy's or a rename's): the OS names the source first."""
    path = e.filename2 or e.filename
    if path is None:
        return f"[Errno {e.errno}] {e.strerror} (writing a host file the lab did not name)"
    return str(HostIOError(os.fsdecode(path), e.errno, e.strerror))


if __name__ == "__main__":
    sys.exit(main())
