"""The exit codes of `vfio-lab`, and what they become under `git bisect run`.

git bisect run reads 0 as good, 1-127 (but 125) as bad, 125 as "cannot test this
commit", and anything else as "stop bisecting". A broken build or a guest that never
answered says nothing about the commit, so `--bisect` turns them into 125; a usage
error or a crash of the lab itself stops the bisection.
"""

from __future__ import annotations

EXIT_OK = 0  # every result as expected
EXIT_UNEXPECTED = 1  # a test failed, errored, passed unexpectedly or did not run
EXIT_USAGE = 2  # the command line or a scenario file is wrong
EXIT_INFRA = 3  # the lab could not do its part: build, boot, SSH, a missing tool
EXIT_CRASH = 4  # a bug in the lab itself (a traceback is printed; please report it)
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM

BISECT_SKIP = 125
BISECT_ABORT = 128

_BISECT = {
    EXIT_OK: EXIT_OK,
    EXIT_UNEXPECTED: EXIT_UNEXPECTED,
    EXIT_INFRA: BISECT_SKIP,
}


def for_bisect(code: int) -> int:
    """`code` as git bisect run understands it."""
    return _BISECT.get(code, BISECT_ABORT)
