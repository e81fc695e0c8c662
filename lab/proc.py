"""Running host tools: argv lists only, output kept in a log, failures as BuildError."""

from __future__ import annotations

import subprocess
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from lab.errors import BuildError
from lab.progress import SILENT, Progress

TAIL_LINES = 30


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
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"$ {' '.join(args)}\n")
        out.flush()
        try:
            proc = subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
        except FileNotFoundError:
            raise BuildError(artifact, f"{args[0]} not found (run `vfio-lab doctor`)") from None
        assert proc.stdout is not None
        with proc:
            for line in proc.stdout:
                out.write(line)
                tail.append(line.rstrip("\n"))
                if show(line):
                    progress(artifact, line.strip())
                if on_line is not None:
                    on_line(line)
    if proc.returncode != 0:
        raise BuildError(artifact, f"{args[0]} exited {proc.returncode}; log: {log}", list(tail))


def capture(argv: Sequence[str | Path], *, artifact: str, cwd: Path | None = None) -> str:
    """Run a short query command and return its stdout; BuildError on failure."""
    args = [str(a) for a in argv]
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise BuildError(artifact, f"{args[0]} not found (run `vfio-lab doctor`)") from None
    if done.returncode != 0:
        raise BuildError(
            artifact,
            f"{' '.join(args)} exited {done.returncode}",
            done.stderr.splitlines()[-TAIL_LINES:],
        )
    return done.stdout
