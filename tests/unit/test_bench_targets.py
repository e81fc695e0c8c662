"""benchmarks/targets.py keeps every changed outcome of `vfio-lab compare`, however many,
and drops only the entries that speed work may change: per-test diagnostics."""

from __future__ import annotations

from tests.unit.test_coldsuite import load_benchmark

# The sections as lab/results/compare.py renders them, diagnostics in the middle.
COMPARE = """\
compare old -> new
fixes (1):
  7.2-y  vfio_pci_dmabuf_test.export_bar_slice  skip -> pass
changed diagnostics (3):
  7.2-y  a.b  pass -> pass: iova: 0x1 -> 0x2
  7.2-y  a.c  xfail -> xfail: cpu_map_size: unknown -> 4K
  7.2-n  a.d  pass -> pass: iova: 0x1 -> 0x2
other result changes (1):
  7.2-n  a.e  xfail -> skip
cells that vanished: 7.2-z
regressions: none"""


def test_every_outcome_change_is_kept_and_only_diagnostics_are_dropped() -> None:
    assert load_benchmark("targets").outcome_lines(COMPARE) == [
        "compare old -> new",
        "fixes (1):",
        "  7.2-y  vfio_pci_dmabuf_test.export_bar_slice  skip -> pass",
        "changed diagnostics (3):",
        "other result changes (1):",
        "  7.2-n  a.e  xfail -> skip",
        "cells that vanished: 7.2-z",
        "regressions: none",
    ]
