"""Running host tools: argv lists only, output kept in a log, failures as BuildError."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from lab.core.errors import BuildError
from lab.core.files import HostFile, make_dir
from lab.core.progress import SILENT, Progress

TAIL_LINES = 30
STOP_WAIT_S = 10.0
# Tools running now, from any thread: Ctrl-C in the main thread stops the builds that
# worker threads are waiting on (see stop_running).
_RUNNING: set[subprocess.Popen[str]] = set()
_RUNNING_LOCK = threading.Lock()


def die_with_lab(signal_name: str = "KILL") -> list[str]:
    """An argv prefix: the kernel signals the child when the thread that started it dies,
    even by SIGKILL, when no `finally` runs. setpriv sets that up between fork and exec,
    which Python's preexec_fn cannot do safely in a threaded process.

    A lab that dies before setpriv has set it never signals: the shell after it runs the
    command only while its parent is still this process (the race a lab killed just
    after starting QEMU would otherwise lose, leaving QEMU running)."""
    only_while_lab_lives = '[ "$PPID" = "$0" ] && exec "$@"'
    return ["setpriv", "--pdeathsig", signal_name, "--", "sh", "-c", only_while_lab_lives,
            str(os.getpid())]  # fmt: skip


def run_logged(
    argv: Sequence[str | Path],
    *,
    artifact: str,
    log: Path,
    progress: Progress = SILENT,
    show: Callable[[str], bool] = lambda line: False,
    on_line: Callable[[str], None] | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """Run `argv`, appending its output to `log`; lines for which `show` is true become progress,
    and `on_line` sees every line (for progress of its own, such as counting).

    Raises BuildError with the log's tail when the command fails.
    """
    args = [str(a) for a in argv]
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    make_dir(log.parent)
    # Line-buffered: the log can be followed (tail -f) while a long build runs.
    with HostFile(log, "a", buffering=1) as out:
        out.write(f"$ {' '.join(args)}\n")
        out.flush()
        if not _runnable(args[0], cwd):
            raise BuildError(artifact, f"{args[0]} not found (run `vfio-lab doctor`)")
        # Its own session: the lab stops the whole group itself (make and its compilers),
        # on Ctrl-C, SIGTERM or an error; TERM lets make clean up after itself.
        proc = subprocess.Popen(
            [*die_with_lab("TERM"), *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        assert proc.stdout is not None
        with _RUNNING_LOCK:
            _RUNNING.add(proc)
        try:
            for line in proc.stdout:
                out.write(line)
                tail.append(line.rstrip("\n"))
                if show(line):
                    progress(artifact, line.strip())
                if on_line is not None:
                    on_line(line)
            proc.wait()
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(proc)
            stop_group(proc)
    if proc.returncode != 0:
        raise BuildError(artifact, f"{args[0]} exited {proc.returncode}; log: {log}", list(tail))


def _runnable(program: str, cwd: Path | None) -> bool:
    """Whether `program` can be run: a command on PATH, or a path (relative ones from `cwd`)."""
    if "/" in program and cwd is not None:
        program = str(cwd / program)
    return shutil.which(program) is not None


def stop_running() -> None:
    """SIGTERM to every tool run_logged is running, in any thread: their callers then fail
    fast (a BuildError) instead of finishing a build nobody waits for."""
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for proc in running:
        _signal_group(proc, signal.SIGTERM)


def stop_group(proc: subprocess.Popen[str]) -> None:
    """End `proc` and every process of its session, if still running: SIGTERM, then SIGKILL
    (at once, if an interrupt arrives while waiting)."""
    try:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_WAIT_S)
    finally:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _signal_group(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def capture(
    argv: Sequence[str | Path],
    *,
    artifact: str,
    cwd: Path | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> str:
    """Run a short query command and return its stdout; BuildError on failure (with `check`:
    a non-zero exit; always: a command that is not there)."""
    args = [str(a) for a in argv]
    try:
        done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise BuildError(artifact, f"{args[0]} not found (run `vfio-lab doctor`)") from None
    if check and done.returncode != 0:
        raise BuildError(
            artifact,
            f"{' '.join(args)} exited {done.returncode}",
            done.stderr.splitlines()[-TAIL_LINES:],
        )
    return done.stdout
