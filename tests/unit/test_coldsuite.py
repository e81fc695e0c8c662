"""benchmarks/coldsuite.py reads a `.ci/run` log: tox's environments and pytest's
--durations lines, summed per test file, slowest first."""

from __future__ import annotations

import importlib.util
import sys

from tests.conftest import REPO


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (the scripts import each other from their folder)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, REPO / f"benchmarks/{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


LOG = """\
======= 765 passed, 43 deselected in 77.30s (0:01:17) =======
============================= slowest durations ==============================
953.21s call     tests/integration/test_bisect.py::test_bisect_names_the_commit
401.50s setup    tests/integration/test_kernels.py::test_iommufd_compat_matrix
12.00s call     tests/integration/test_kernels.py::test_iommufd_compat_matrix
0.50s teardown tests/integration/test_kernels.py::test_upstreams[x-y]
==== 1 failed, 42 passed, 757 deselected in 3001.00s (0:50:01) ====
  lint: OK (12.34=setup[1.23]+cmd[11.11] seconds)
  integration: FAIL code 1 (3001.50=setup[3.00]+cmd[2998.50] seconds)
  unit: OK (80.10 seconds)
"""


def test_a_log_is_summed_per_file_slowest_first() -> None:
    got = load_benchmark("coldsuite").parse(LOG)
    assert got["vm_test_files_s"] == {
        "tests/integration/test_bisect.py": 953.2,
        "tests/integration/test_kernels.py": 414.0,
    }
    assert list(got["vm_test_files_s"]) == sorted(
        got["vm_test_files_s"], key=lambda p: -got["vm_test_files_s"][p]
    )
    assert (
        got["slowest_tests_s"]["tests/integration/test_kernels.py::test_iommufd_compat_matrix"]
        == 413.5
    )
    assert got["tox_envs_s"] == {"lint": 12.34, "integration": 3001.5, "unit": 80.1}
    assert got["tox_env_results"]["integration"] == "FAIL"
    assert got["pytest_summaries"] == [
        "765 passed, 43 deselected",
        "1 failed, 42 passed, 757 deselected",
    ]
