"""The guest code's kernel-log markers (vfiolib.kmsg), which the unit tests point at a
file of their own (the autouse `kmsg` fixture): never at the host's /dev/kmsg."""

from __future__ import annotations

import os
import subprocess
import sys

from lab.core.data import GUEST_TESTS


def test_a_missing_kernel_log_is_not_created(tmp_path):
    missing = tmp_path / "no-kmsg"
    subprocess.run(
        [sys.executable, "-c", "from vfiolib import kmsg; kmsg.mark('test-start a')"],
        env=dict(os.environ, VFIO_LAB_KMSG=str(missing), PYTHONPATH=str(GUEST_TESTS)),
        check=True,
    )
    assert not missing.exists()


def test_each_marker_goes_where_the_environment_says_then(tmp_path, kmsg, monkeypatch):
    from vfiolib import kmsg as markers

    markers.mark("test-start a")
    other = tmp_path / "other-kmsg"
    other.touch()
    monkeypatch.setenv("VFIO_LAB_KMSG", str(other))
    markers.mark("test-end a pass")
    assert kmsg.read_text() == "vfio-lab: test-start a\n"
    assert other.read_text() == "vfio-lab: test-end a pass\n"
