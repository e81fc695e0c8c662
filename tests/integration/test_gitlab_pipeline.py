"""The nightly pipeline `vfio-lab ci gitlab` writes, run by a real CI engine
(gitlab-ci-local) over three nights of a two-cell scenario in two shards: a first night
that passes, a night with a regression that the compare job names, and a night whose
second shard delivers no run, which the merge names.

The jobs run in gitlab-ci-local's shell executor (`--venv`: no image; each job in a
directory of its own, artifacts passed on as GitLab passes them), with this checkout's
lab (the virtualenv running the test) and the host's warm artifact cache, one job at a
time. The previous night's merged run comes from a stand-in for GitLab's job artifacts
API on 127.0.0.1 that serves the last night whose pipeline passed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.core.cache import Cache
from tests.fakeapi import FakeApi, serving, zipped

pytestmark = pytest.mark.vm

TOKEN = "night-job-token"
# GitLab's job artifacts API for the merge job of branch main, in any project.
ARTIFACTS = re.compile(r"/api/v4/projects/[^/]+/jobs/artifacts/main/download\?job=merge")
# A warm night takes about a minute; on a cold cache the first builds the root filesystem
# and fetches the kernel.
NIGHT_TIMEOUT_S = 1800
PAYLOAD = '''"""Two tests of the edu device: the second one regresses when IDENT changes."""

from vfiolib import edu as E

IDENT = {ident}


def test_ident_matches(default_device):
    assert default_device.mmap(0).read32(E.IDENT) == E.IDENT_VALUE


def test_ident_is_what_the_night_expects(default_device):
    assert default_device.mmap(0).read32(E.IDENT) == IDENT
'''
# Quick's machine (its snapshot may be warm); two kernel entries naming the same stock
# kernel two ways: two cells, one per shard, one kernel to fetch.
SCENARIO = """\
name: gitlab-nightly
kernels: [debian-stock, {source: 'debian-stock:linux-image-amd64', name: again}]
machine:
  memory: 4G
  cpus: 2
  iommu: intel-iommu
  hugepages: {2M: 32, 1G: 1}
  cmdline: [mitigations=off]
devices:
  - type: edu
    dma_mask: 0xffffffffffffffff
payload:
  tests: payload
"""
# As compare names it: the module, then the test without its test_ prefix.
REGRESSED = "night_test.ident_is_what_the_night_expects"


@dataclass(frozen=True)
class Night:
    """What gitlab-ci-local said of one pipeline: its exit code and each job's log."""

    returncode: int
    output: str
    logs: dict[str, str]
    builds: Path  # each job's directory, as the night left it

    def exit_code(self, job: str) -> int:
        """The job's exit code, as gitlab-ci-local reports it when the job has finished."""
        [end] = re.findall(rf"^{job} +finished in .*$", self.output, re.M)
        failed = re.search(r"FAIL (\d+)", end)
        return int(failed[1]) if failed else 0


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def commit(repo: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "--", *files)  # not what the nights left in it
    git(repo, "commit", "-q", "-m", message)


def payload(ident: str) -> dict[str, str]:
    return {
        "payload/conftest.py": 'pytest_plugins = ["vfiolib.fixtures"]\n',
        "payload/night_test.py": PAYLOAD.format(ident=ident),
    }


def in_repo(repo: Path, *args: str) -> str:
    """The lab under test (this interpreter's) in the repository: its output."""
    done = subprocess.run(
        [sys.executable, "-m", "lab", *args], cwd=repo, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A project of its own, as gitlab-ci-local needs: the scenario, its payload and the
    pipeline `vfio-lab ci gitlab` writes for it, with this checkout's virtualenv."""
    venv = Path(sys.prefix)
    assert (venv / "bin" / "vfio-lab").is_file(), f"{venv}: no virtualenv with the lab"
    path = tmp_path / "project"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "night@vfio-lab.invalid")
    git(path, "config", "user.name", "night")
    git(path, "remote", "add", "origin", "https://gitlab.invalid/lab/nightly.git")
    commit(path, {"nightly.yaml": SCENARIO, **payload("E.IDENT_VALUE")}, "the scenario")
    pipeline = in_repo(path, "ci", "gitlab", "nightly.yaml", "--shards", "2", "--venv", str(venv))
    commit(path, {".gitlab-ci.yml": pipeline}, "the pipeline, as vfio-lab ci gitlab writes it")
    return path


@pytest.fixture
def gitlab() -> Iterator[FakeApi]:
    with serving() as api:
        yield api


def night(repo: Path, api: FakeApi, home: Path) -> Night:
    """One pipeline, as a schedule starts it; the jobs see the API and a job token as
    GitLab gives them, and the host's warm cache instead of the pipeline's own."""
    gcl = shutil.which("gitlab-ci-local")
    assert gcl, "no gitlab-ci-local: scripts/setup-host.sh --test installs it"
    variables = {
        "CI_API_V4_URL": f"{api.url}/api/v4",
        "CI_JOB_TOKEN": TOKEN,
        "VFIO_LAB_CACHE": str(Cache().root),
    }
    # Artifacts stay in gitlab-ci-local's state, as on GitLab, not in the checkout.
    argv = [gcl, "--shell-executor-no-image", "--shell-isolation", "--no-artifacts-to-source",
            "--concurrency", "1", "--no-color", "--home", str(home),
            "--ignore-predefined-vars", ",".join(variables)]  # fmt: skip
    for name, value in variables.items():
        argv += ["--variable", f"{name}={value}"]
    done = subprocess.run(
        argv, cwd=repo, capture_output=True, text=True, timeout=NIGHT_TIMEOUT_S,
        env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    state = repo / ".gitlab-ci-local"
    logs = {p.stem: p.read_text() for p in (state / "output").glob("*.log")}
    return Night(done.returncode, done.stdout + done.stderr, logs, state / "builds")


def serve_merged(api: FakeApi, repo: Path, fetched: str) -> None:
    """The night's merged run as GitLab's artifacts API serves the merge job's artifacts
    (an archive holding merged/), from now on at the path the fetch asked for."""
    assert ARTIFACTS.fullmatch(fetched), fetched
    merged = repo / ".gitlab-ci-local" / "artifacts" / "merge" / "merged"
    assert (merged / "summary.json").is_file(), f"{merged}: the merge job kept no run"
    files = {
        f"merged/{p.relative_to(merged)}": p.read_bytes() for p in merged.rglob("*") if p.is_file()
    }
    api.routes[fetched] = (200, {"Content-Type": "application/zip"}, zipped(files))


def fetches(api: FakeApi, since: int) -> list[str]:
    """The API paths requested since the `since`th request, each with the job's token."""
    asked = api.requests[since:]
    assert [headers.get("job-token") for _, headers in asked] == [TOKEN] * len(asked)
    return [path for path, _ in asked]


def test_three_nights_of_the_gitlab_pipeline(results, repo, gitlab, tmp_path) -> None:
    home = tmp_path / "gcl-home"
    keys = [in_repo(repo, "cache-key", "nightly.yaml", "--shard", f"{k}/2").strip() for k in (1, 2)]

    # Night 1: every job passes; no night before it to compare with.
    first = night(repo, gitlab, home)
    assert first.returncode == 0, first.output
    assert set(first.logs) == {"plan", "shard-1", "shard-2", "merge"}, first.output
    assert [first.exit_code(job) for job in first.logs] == [0] * 4, first.output
    for k, cell in ((1, "debian-stock"), (2, "again")):
        shard = first.logs[f"shard-{k}"]
        assert f"run nightly.yaml --shard {k}/2 --results results/shard-{k}" in shard
        assert f"{cell}: pass: 2 passed, 0 failed" in shard, shard
        # Each shard's cache is keyed by its cells' artifact key, passed on from plan.
        assert f"cache/vfio-lab-shard{k}-{keys[k - 1]}" in first.output, first.output
    merge = first.logs["merge"]
    assert "no previous night to compare with" in merge, merge
    assert "missing" not in merge, merge
    [asked] = fetches(gitlab, 0)
    serve_merged(gitlab, repo, asked)

    # Night 2: the payload's second test regresses in both cells; the merged run fails
    # and compare names the regression; the job says both.
    commit(repo, payload("0xDEADBEEF"), "a regression")
    second = night(repo, gitlab, home)
    assert second.returncode != 0, second.output
    assert [second.exit_code(job) for job in ("shard-1", "shard-2", "merge")] == [1, 1, 1]
    merge = second.logs["merge"]
    assert "the previous night: the merge job's artifacts of the last successful " in merge
    assert fetches(gitlab, 1) == [asked]
    assert (
        "new failures and errors (2):\n"
        f"  debian-stock  {REGRESSED}  pass -> fail\n"
        f"  again  {REGRESSED}  pass -> fail\n"
    ) in merge, merge
    assert "regressions: yes" in merge
    for said in ("vfio-lab merge exited 1", "vfio-lab compare exited 1", "the job exits 1"):
        assert said in merge, merge

    # Night 3: the regression is gone, but shard 2 cannot write its run (its results
    # directory is a file): the merge names the missing cell and exits 3, and the
    # comparison with night 1 (the last that passed) counts it as a regression, which
    # outweighs the 3 in the job's exit; the job says both.
    commit(repo, {**payload("E.IDENT_VALUE"), "results/shard-2": ""}, "shard 2 delivers nothing")
    third = night(repo, gitlab, home)
    assert third.returncode != 0, third.output
    assert [third.exit_code(job) for job in ("shard-1", "shard-2", "merge")] == [0, 3, 1]
    assert "debian-stock: pass: 2 passed, 0 failed" in third.logs["shard-1"]
    assert "Not a directory" in third.logs["shard-2"], third.logs["shard-2"]
    merge = third.logs["merge"]
    assert "missing (promised, in no run): again (no run of shard 2/2)" in merge, merge
    for said in ("vfio-lab merge exited 3", "vfio-lab compare exited 1", "the job exits 1"):
        assert said in merge, merge
    assert "cells missing from the new run (promised, never ran): again" in merge, merge
    assert fetches(gitlab, 2) == [asked], "night 3 compares with night 1, the last green"
