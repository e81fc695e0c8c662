"""What both guest runners (tap_report, lab_kselftest) write after a test's result line
for the host's parser (lab.results.tap)."""

from __future__ import annotations


def duration_block(seconds: float) -> str:
    """The result's TAP 13 YAML block with its wall time (`duration_ms`, node-tap's key).
    One string, written at once: a guest that dies right after a result must not leave
    the block open."""
    return f"  ---\n  duration_ms: {seconds * 1000:.3f}\n  ..."
