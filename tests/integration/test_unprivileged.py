"""The lab as a normal user, from nothing: its own checkout, `make setup` with the host
packages already installed (no sudo), the root filesystem built in the user's namespace,
a run, a shell; and nothing left in its cache or checkout that is not the user's.

`.ci/run` runs the suite as root: the test makes its user (`useradd` if absent, with
subordinate ids), as issue 24 asks. Run by a normal user, the suite tests that user, in a
home of its own. The user's cache is its own ~/.cache/vfio-lab,
emptied first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.integration.unprivileged import fresh_checkout, not_owned_by, unprivileged_user

pytestmark = pytest.mark.vm


def test_a_normal_user_runs_the_lab_from_nothing(results: Path, tmp_path: Path) -> None:
    user = unprivileged_user(tmp_path)
    checkout = fresh_checkout(user)
    cache = user.home / ".cache" / "vfio-lab"
    shutil.rmtree(cache, ignore_errors=True)

    def as_user(*argv: str) -> str:
        done = user.run(list(argv), cwd=checkout)
        assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        return done.stdout + done.stderr

    # setup-host.sh finds nothing missing and asks for no sudo (the user has none).
    as_user("make", "setup")
    lab = str(checkout / ".venv" / "bin" / "vfio-lab")
    runs = checkout / "results"
    as_user(lab, "run", "quick", "-k", "vfio_pci_device_test", "--results", str(runs))
    summary = json.loads((runs / "latest" / "summary.json").read_text())
    (cell,) = summary["cells"]
    assert summary["exit_code"] == 0 and cell["verdict"] == "pass", cell
    records = json.loads((Path(cell["dir"]) / "tests.json").read_text())
    assert any(r["outcome"] == "pass" for r in records), records
    assert all(r["name"].startswith("vfio_pci_device_test.") for r in records), records
    if summary["accelerator"] == "tcg":  # the probe says why: absent, or not the user's
        assert summary["accelerator_reason"], summary

    # Built here, as the user: through its namespace, not as root.
    (log,) = (cache / "rootfs").glob("*/build.log")
    assert "unshare --map-root-user" in log.read_text().splitlines()[0]

    as_user(lab, "shell", "-q", "--", "true")

    assert not_owned_by(user, cache, checkout) == []
    assert list((cache / "tmp").iterdir()) == [], "a scratch directory outlived its run"
