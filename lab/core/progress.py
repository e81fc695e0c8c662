"""Progress lines for long work (builds, boots, matrix runs), on stderr."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.start = time.monotonic()

    def __call__(self, label: str, message: str) -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - self.start
        print(f"[{elapsed:7.1f}s] {label}: {message}", file=self.stream, flush=True)


SILENT = Progress(quiet=True)
