"""What both guest runners (tap_report, lab_kselftest) write after a test's result line
for the host's parser (lab.results.tap)."""

from __future__ import annotations


def duration_block(seconds: float, raw: str | None = None) -> str:
    """The result's TAP 13 YAML block with its wall time (`duration_ms`, node-tap's key)
    and, for a result a pytest xfail marker made (xfail, xpass), what the test itself
    came to (`raw_outcome`: pass, fail or error), which TAP's `# TODO` cannot say.
    One string, written at once: a guest that dies right after a result must not leave
    the block open."""
    said = f"\n  raw_outcome: {raw}" if raw is not None else ""
    return f"  ---\n  duration_ms: {seconds * 1000:.3f}{said}\n  ..."
