"""CI pipelines as emitted, checked by real validators (check-jsonschema's vendored
GitHub Actions and GitLab CI schemas), and the artifact key they cache by."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lab.core.cache import Cache
from lab.run.artifactkey import artifact_key
from lab.spec import scenario
from tests.conftest import lab

SCHEMAS = {"github": "vendor.github-workflows", "gitlab": "vendor.gitlab-ci"}


@pytest.mark.parametrize("engine", sorted(SCHEMAS))
@pytest.mark.parametrize("shards", [1, 4])
def test_the_emitted_pipeline_passes_its_engines_validator(engine, shards, tmp_path) -> None:
    done = lab("ci", engine, "nightly", "--shards", str(shards))
    assert done.returncode == 0, done.stderr
    path = tmp_path / f"{engine}.yml"
    path.write_text(done.stdout)
    check = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", SCHEMAS[engine], path],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "&id" not in done.stdout, "no YAML anchors: each job reads on its own"


def test_github_has_a_job_per_shard_a_cache_a_merge_and_a_gate() -> None:
    wf = yaml.safe_load(lab("ci", "github", "nightly", "--shards", "3").stdout)
    shard, merge = wf["jobs"]["shard"], wf["jobs"]["merge"]
    assert shard["strategy"]["matrix"]["shard"] == [1, 2, 3]
    steps = {s.get("name") or s["uses"]: s for s in shard["steps"]}
    assert "cache-key nightly" in steps["artifact key"]["run"]
    assert steps["actions/cache@v4"]["with"]["key"].endswith("${{ steps.key.outputs.key }}")
    assert "--shard ${{ matrix.shard }}/3" in steps["run the shard"]["run"]
    runs = " ".join(s.get("run", "") for s in merge["steps"])
    assert "vfio-lab merge shards/shard-*/2* --into merged" in runs
    assert "vfio-lab compare previous merged" in runs
    assert merge["needs"] == "shard" and merge["if"] == "always()"


def test_gitlab_runs_the_shards_in_parallel_keyed_by_the_plan() -> None:
    text = lab("ci", "gitlab", "nightly", "--shards", "2").stdout
    pipeline = yaml.safe_load(text)
    assert pipeline["shard"]["parallel"]["matrix"] == [{"SHARD": ["1", "2"]}]
    assert pipeline["shard"]["cache"][0]["key"] == "vfio-lab-${SHARD}-$ARTIFACT_KEY"
    assert "cache-key nightly" in pipeline["plan"]["script"][0]
    assert pipeline["merge"]["script"][-1].startswith("exit $(cat merged.status")
    # One shell runs every line: none may leave the project directory.
    assert not any("cd " in line for line in pipeline["merge"]["script"])


def test_bad_shard_counts_and_scenarios_are_usage_errors(tmp_path: Path) -> None:
    assert lab("ci", "github", "nightly", "--shards", "0").returncode == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("machine:\n  memroy: 4G\n")
    done = lab("ci", "gitlab", str(bad))
    assert done.returncode == 2 and "memroy" in done.stderr


def git(tree: Path, *args: str) -> None:
    subprocess.run(["git", "-C", tree, "-c", "user.email=a@b", "-c", "user.name=a", *args],
                   check=True, capture_output=True)  # fmt: skip


def test_the_artifact_key_follows_the_kernel_and_the_config(tmp_path: Path) -> None:
    tree = tmp_path / "linux"
    tree.mkdir()
    (tree / "Makefile").write_text("VERSION = 7\n")
    (tree / "Kconfig").write_text('mainmenu "x"\n')
    git(tree, "init", "-q")
    git(tree, "add", ".")
    git(tree, "commit", "-qm", "one")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"kernels: ['local:{tree}']\nfragments: [iommufd]\n")

    def key() -> str:
        return artifact_key(scenario.expand(scenario.load(spec)), Cache(tmp_path / "cache"))

    first = key()
    assert key() == first
    (tree / "Makefile").write_text("VERSION = 8\n")
    edited = key()
    assert edited != first, "an edit in the tree is another kernel"
    spec.write_text(f"kernels: ['local:{tree}']\nfragments: [iommufd, dmabuf]\n")
    assert key() != edited, "another config is another kernel"
