"""CI pipelines as emitted: checked by real validators (check-jsonschema's vendored GitHub
Actions and GitLab CI schemas), walked as job graphs for names that lead nowhere, and
their shell lines run as the engine runs them, in a job that has only what the image and
the job's tools line give it (no curl). Also the artifact key they cache by, and
`vfio-lab ci fetch-previous` against a stand-in API on 127.0.0.1."""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.core.cache import Cache
from lab.model import scenario
from lab.model.shards import minutes, split
from lab.results import previous
from lab.results.previous import FetchFailed
from lab.run.artifactkey import artifact_key
from tests.conftest import REPO, lab
from tests.fakeapi import FakeApi, serving, zipped

SCHEMAS = {"github": "vendor.github-workflows", "gitlab": "vendor.gitlab-ci"}


@functools.cache
def _emit(engine: str, *args: str) -> str:
    done = lab("ci", engine, "nightly", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def emitted(engine: str, *args: str) -> Any:
    """`vfio-lab ci ENGINE nightly ARGS` as loaded: each call a fresh copy to change."""
    return yaml.safe_load(_emit(engine, *args))


@pytest.mark.parametrize(
    ("engine", "args"),
    [(engine, ("--shards", shards)) for engine in sorted(SCHEMAS) for shards in ("1", "4")]
    + [("gitlab", ("--shards", "2", "--venv", "/opt/vfio-lab/.venv"))],
)
def test_the_emitted_pipeline_passes_its_engines_validator(engine, args, tmp_path) -> None:
    done = lab("ci", engine, "nightly", *args)
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


# -- the job graphs: every name a job uses leads to what it names ------------------------


def _matrix(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The matrix's combinations (each key's list crossed with the others')."""
    combos: list[dict[str, Any]] = [{}]
    for name, values in job.get("strategy", {}).get("matrix", {}).items():
        combos = [{**c, name: v} for c in combos for v in values]
    return combos


def _expand(text: str, job: dict[str, Any]) -> set[str]:
    """`text` for each matrix combination, its `${{ matrix.X }}` replaced."""

    def one(combo: dict[str, Any]) -> str:
        out = text
        for name, value in combo.items():
            out = out.replace(f"${{{{ matrix.{name} }}}}", str(value))
        return out

    return {one(combo) for combo in _matrix(job)}


def _upstream(jobs: dict[str, Any], name: str) -> set[str]:
    needs = jobs[name].get("needs", [])
    direct = {needs} if isinstance(needs, str) else set(needs)
    return direct.union(*(_upstream(jobs, n) for n in direct if n in jobs))


def github_dangling(wf: dict[str, Any]) -> list[str]:
    """What in a workflow names nothing: a need, a step output, an artifact downloaded (or
    fetched from the previous run) that no job it needs uploads, a cache restored and not
    saved (or saved only on success)."""
    jobs: dict[str, Any] = wf["jobs"]
    found: list[str] = []
    uploads: dict[str, str] = {}  # artifact name: the job uploading it
    for name, job in jobs.items():
        needs = job.get("needs", [])
        found += [f"{name} needs {n}: no such job" for n in ([needs] if isinstance(needs, str)
                  else needs) if n not in jobs]  # fmt: skip
        ids: set[str] = set()
        restores: dict[str, dict[str, Any]] = {}
        saved: set[str] = set()
        for step in job["steps"]:
            uses = step.get("uses", "")
            for ref in re.findall(r"steps\.([\w-]+)\.outputs", json.dumps(step)):
                if ref not in ids:
                    found.append(f"{name}: steps.{ref} is no earlier step")
            if uses.startswith("actions/upload-artifact@"):
                uploads.update(dict.fromkeys(_expand(step["with"]["name"], job), name))
            if uses.startswith("actions/cache@"):
                found.append(f"{name}: {uses} saves the cache only when the job succeeds")
            if uses.startswith("actions/cache/restore@"):
                restores[step["id"]] = step["with"]
            if uses.startswith("actions/cache/save@"):
                m = re.fullmatch(r"\$\{\{ steps\.([\w-]+)\.outputs\.cache-primary-key \}\}",
                                 step["with"]["key"])  # fmt: skip
                if m is None or m.group(1) not in restores:
                    found.append(f"{name}: a cache saved under {step['with']['key']} is no "
                                 "restored one")  # fmt: skip
                elif restores[m.group(1)]["path"] != step["with"]["path"]:
                    found.append(f"{name}: the cache of {m.group(1)} is saved from elsewhere")
                else:
                    saved.add(m.group(1))
                if not step.get("if", "").startswith("always()"):
                    found.append(f"{name}: the cache is saved only when the job succeeds")
            ids.add(step.get("id", ""))
        found += [
            f"{name}: the cache restored by {r} is never saved" for r in restores.keys() - saved
        ]
    for name, job in jobs.items():
        upstream = _upstream(jobs, name)
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/download-artifact@"):
                wanted = step["with"].get("name") or step["with"]["pattern"]
                if not any(
                    fnmatch.fnmatch(a, wanted) and j in upstream for a, j in uploads.items()
                ):
                    found.append(f"{name} downloads {wanted}: no job it needs uploads it")
            if "ci fetch-previous github" in step.get("run", "") and previous.MERGED not in uploads:
                found.append(
                    f"{name} fetches the previous run's {previous.MERGED}: no job uploads it"
                )
    return found


GITLAB_KEYWORDS = {"stages", "default", "variables", "workflow", "include"}


def gitlab_dangling(p: dict[str, Any]) -> list[str]:
    """What in a GitLab pipeline names nothing: a need or dependency that is no job (or a
    later stage's), a variable in a cache key that no needed job's dotenv writes, a cache
    saved only on success, artifacts a job needs that nobody makes or that nobody reads,
    the previous night's merge job."""
    jobs = {k: v for k, v in p.items() if k not in GITLAB_KEYWORDS and not k.startswith(".")}
    stage = {s: i for i, s in enumerate(p["stages"])}
    found: list[str] = []
    read: set[str] = set()  # the jobs whose artifacts some job takes
    for name, job in jobs.items():
        if job.get("stage") not in stage:
            found.append(f"{name}: stage {job.get('stage')} is not in stages")
        needs = [n if isinstance(n, str) else n["job"] for n in job.get("needs", [])]
        for n in needs:
            if n not in jobs:
                found.append(f"{name} needs {n}: no such job")
            elif stage.get(jobs[n]["stage"], 0) > stage.get(job.get("stage"), 0):
                found.append(f"{name} needs {n}, of a later stage")
        for d in job.get("dependencies", []):
            if d not in jobs or ("needs" in job and d not in needs):
                found.append(f"{name} depends on {d}: no such job among its needs")
        for n in job.get("needs", []):
            if isinstance(n, dict) and n.get("artifacts") and n["job"] in jobs:
                if not jobs[n["job"]].get("artifacts", {}).get("paths"):
                    found.append(f"{name} takes {n['job']}'s artifacts: it makes none")
                read.add(n["job"])
        for cache in job.get("cache", []):
            if cache.get("when") != "always":
                found.append(f"{name}: cache {cache['key']} is saved only when the job succeeds")
            for var in re.findall(r"\$\{?([A-Z_0-9]+)", cache["key"]):
                if not any(_writes_dotenv(jobs.get(n, {}), var) for n in needs):
                    found.append(f"{name}: ${var} in a cache key: no job it needs writes it")
        if any("ci fetch-previous gitlab" in line for line in job.get("script", [])):
            merge = jobs.get(previous.MERGE_JOB, {})
            if f"{previous.MERGED}/" not in merge.get("artifacts", {}).get("paths", []):
                found.append(f"{name} fetches job {previous.MERGE_JOB}'s {previous.MERGED}/: "
                             "no such job makes it")  # fmt: skip
    for name, job in jobs.items():
        paths = job.get("artifacts", {}).get("paths", [])
        if any(path.startswith("results/") for path in paths) and name not in read:
            found.append(f"{name}'s results are taken by no job")
    return found


def _writes_dotenv(job: dict[str, Any], var: str) -> bool:
    dotenv = job.get("artifacts", {}).get("reports", {}).get("dotenv")
    return dotenv is not None and any(
        re.search(rf"\b{var}=.*>>? *{re.escape(dotenv)}$", line) for line in job["script"]
    )


def test_the_github_job_graph_has_no_dangling_name() -> None:
    assert github_dangling(emitted("github", "--shards", "3")) == []


def test_the_gitlab_job_graph_has_no_dangling_name() -> None:
    assert gitlab_dangling(emitted("gitlab", "--shards", "3")) == []


def _step(wf: dict[str, Any], job: str, uses: str) -> dict[str, Any]:
    return next(s for s in wf["jobs"][job]["steps"] if s.get("uses", "").startswith(uses))


def _renamed_upload(wf: dict[str, Any]) -> None:
    _step(wf, "shard", "actions/upload-artifact")["with"]["name"] = "run-${{ matrix.shard }}"


def _merged_not_kept(wf: dict[str, Any]) -> None:
    _step(wf, "merge", "actions/upload-artifact")["with"]["name"] = "merged-run"


def _save_on_success(wf: dict[str, Any]) -> None:
    del _step(wf, "shard", "actions/cache/save")["if"]


def _save_another_key(wf: dict[str, Any]) -> None:
    _step(wf, "shard", "actions/cache/save")["with"]["key"] = "${{ steps.key.outputs.key }}"


def _no_save(wf: dict[str, Any]) -> None:
    wf["jobs"]["shard"]["steps"].remove(_step(wf, "shard", "actions/cache/save"))


@pytest.mark.parametrize(
    "fool",
    [
        _renamed_upload,
        _merged_not_kept,
        _save_on_success,
        _save_another_key,
        _no_save,
        lambda wf: wf["jobs"]["merge"].update(needs="shards"),
        lambda wf: wf["jobs"]["shard"]["steps"][3].update(id="artifact-key"),
    ],
)
def test_the_github_walk_finds_a_name_that_leads_nowhere(fool: Callable[[Any], None]) -> None:
    wf = emitted("github", "--shards", "2")
    fool(wf)
    assert github_dangling(wf) != []


def _no_shard_2_read(p: dict[str, Any]) -> None:
    p["merge"]["needs"] = [n for n in p["merge"]["needs"] if n["job"] != "shard-2"]


@pytest.mark.parametrize(
    "fool",
    [
        lambda p: p["shard-1"].update(needs=["plans"]),
        lambda p: p["shard-2"]["cache"][0].update(key="vfio-lab-shard2-$ARTIFACT_KEY_3"),
        lambda p: p["shard-1"]["cache"][1].pop("when"),
        lambda p: p.update(merged=p.pop("merge")),
        lambda p: p["merge"].update(dependencies=["plan"]),
        lambda p: p["plan"].update(stage="merge"),
        _no_shard_2_read,
    ],
)
def test_the_gitlab_walk_finds_a_name_that_leads_nowhere(fool: Callable[[Any], None]) -> None:
    p = emitted("gitlab", "--shards", "2")
    fool(p)
    assert gitlab_dangling(p) != []


# -- the jobs' shell lines, run as the engines run them -------------------------------------


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with serving() as fake:
        yield fake


def gitlab_env(api: FakeApi) -> dict[str, str]:
    return {
        "CI_API_V4_URL": f"{api.url}/api/v4",
        "CI_PROJECT_ID": "42",
        "CI_COMMIT_REF_NAME": "main",
        "CI_DEFAULT_BRANCH": "main",
        "CI_JOB_TOKEN": "job-token",
    }


GITLAB_ARTIFACTS = "/api/v4/projects/42/jobs/artifacts/main/download?job=merge"
RUN = {"summary.json": '{"cells": []}', "c/console.log": "Linux version 6.1\n"}
GITLAB_ZIP = zipped({f"merged/{name}": text for name, text in RUN.items()})


def job(tmp_path: Path, env: Mapping[str, str], **behaviour: str) -> Callable[..., Any]:
    """A job's directory and shell with only what debian:bookworm and the job's tools line
    give it (curl is not there), and a `.venv/bin/vfio-lab` whose `ci fetch-previous` is
    the real one and whose merge, compare and cache-key exit as told (MERGE_EXIT, ...),
    each call logged."""
    work = tmp_path / "job"
    (work / ".venv" / "bin").mkdir(parents=True)
    tools = tmp_path / "image-bin"
    tools.mkdir()
    for tool in ("bash", "sh", "cat", "mkdir", "python3", "sudo", "git", "make"):
        if found := shutil.which(tool):
            (tools / tool).symlink_to(found)
    log = tmp_path / "calls.log"
    fake = work / ".venv" / "bin" / "vfio-lab"
    fake.write_text(f"""#!{shutil.which("bash")}
echo "$*" >> {log}
case "$1" in
  ci) exec {sys.executable} -m lab "$@" ;;
  merge) {shutil.which("mkdir")} -p merged; echo '{{}}' > merged/summary.json; exit $MERGE_EXIT ;;
  compare) exit $COMPARE_EXIT ;;
  cache-key) [ "$KEY_EXIT" = 0 ] && echo 0123456789abcdef; exit $KEY_EXIT ;;
esac
""")
    fake.chmod(0o755)
    exits = {"MERGE_EXIT": "0", "COMPARE_EXIT": "0", "KEY_EXIT": "0", **behaviour}
    shell_env = {"PATH": str(tools), "HOME": str(tmp_path), "PYTHONPATH": str(REPO),
                 "VFIO_LAB_CACHE": str(tmp_path / "cache"), **env, **exits}  # fmt: skip

    def run(lines: list[str], **more: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [shutil.which("bash") or "bash", "-eo", "pipefail", "-c", "\n".join(lines)],
            cwd=work, env={**shell_env, **more}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        done.calls = log.read_text().splitlines() if log.exists() else []  # type: ignore[attr-defined]
        return done

    return run


def test_gitlab_a_previous_night_that_cannot_be_fetched_fails_the_night(tmp_path, api) -> None:
    api.routes[GITLAB_ARTIFACTS] = (500, {}, b"Internal Server Error")
    done = job(tmp_path, gitlab_env(api))(emitted("gitlab")["merge"]["script"])
    assert done.returncode != 0, "the gate was skipped and the night passed: " + done.stdout
    assert "HTTP 500" in done.stderr


def test_gitlab_a_regression_against_the_previous_night_fails_it(tmp_path, api) -> None:
    api.routes[GITLAB_ARTIFACTS] = (200, {"Content-Type": "application/zip"}, GITLAB_ZIP)
    script = emitted("gitlab")["merge"]["script"]
    # One shell runs every line: none may leave the project directory.
    assert not any("cd " in line for line in script)
    done = job(tmp_path, gitlab_env(api), COMPARE_EXIT="1")(script)
    assert "compare previous merged" in done.calls, done.stdout + done.stderr
    assert done.returncode == 1
    tokens = [headers.get("job-token") for _, headers in api.requests]
    assert tokens == ["job-token"]


def test_gitlab_a_first_night_skips_the_comparison_saying_so(tmp_path, api) -> None:
    run = job(tmp_path, gitlab_env(api), MERGE_EXIT="1")
    done = run(emitted("gitlab")["merge"]["script"])
    assert not any(c.startswith("compare") for c in done.calls)
    assert "no previous night to compare with" in done.stdout
    assert done.returncode == 1, "the merged run's own verdict stands"


@pytest.mark.parametrize(
    ("merge", "fetched", "compare", "code", "said"),
    [
        # Missing cells (3) and a regression (1): the job fails as the regression, and
        # says the merge's 3 too.
        ("3", 200, "1", 1, ["merge exited 3", "compare exited 1"]),
        # Failed tests (1) outweigh a previous night that could not be fetched (3).
        ("1", 500, "0", 1, ["merge exited 1", "fetch-previous exited 3"]),
        ("3", 200, "0", 3, ["merge exited 3"]),
        ("0", 500, "0", 3, ["fetch-previous exited 3"]),
        ("2", 200, "2", 2, ["merge exited 2", "compare exited 2"]),
        ("0", 200, "0", 0, []),
    ],
)
def test_gitlab_the_merge_job_names_each_failed_step_and_exits_as_the_lab_weighs_them(
    tmp_path, api, merge: str, fetched: int, compare: str, code: int, said: list[str]
) -> None:
    api.routes[GITLAB_ARTIFACTS] = (
        (200, {"Content-Type": "application/zip"}, GITLAB_ZIP)
        if fetched == 200
        else (500, {}, b"Internal Server Error")
    )
    run = job(tmp_path, gitlab_env(api), MERGE_EXIT=merge, COMPARE_EXIT=compare)
    done = run(emitted("gitlab")["merge"]["script"])
    assert done.returncode == code, done.stdout + done.stderr
    assert ("compare previous merged" in done.calls) == (fetched == 200), "no previous night"
    steps = [line.removeprefix("vfio-lab ") for line in done.stdout.splitlines()]
    assert [s for s in steps if " exited " in s] == said, done.stdout
    assert f"the job exits {code}" in done.stdout


def test_gitlab_a_failing_cache_key_fails_the_plan(tmp_path) -> None:
    done = job(tmp_path, {}, KEY_EXIT="3")(emitted("gitlab", "--shards", "2")["plan"]["script"])
    assert done.returncode == 3, "the shards would be cached under an empty key"


def test_gitlab_on_a_set_up_runner_installs_nothing_and_runs_its_venvs_lab(tmp_path, api) -> None:
    run = job(tmp_path, gitlab_env(api), COMPARE_EXIT="1")
    venv = tmp_path / "lab venv"  # a space: every line must quote it
    venv.symlink_to(tmp_path / "job" / ".venv")
    p = emitted("gitlab", "--shards", "2", "--venv", str(venv))
    assert "default" not in p, "no image, no before_script: the runner is set up already"
    assert gitlab_dangling(p) == []
    scripts = "\n".join(
        line for j in p.values() if isinstance(j, dict) for line in j.get("script", [])
    )
    assert ".venv/bin" not in scripts
    done = run(p["plan"]["script"])
    assert done.returncode == 0, done.stderr
    assert done.calls == [f"cache-key nightly --shard {k}/2" for k in (1, 2)]
    api.routes[GITLAB_ARTIFACTS] = (200, {"Content-Type": "application/zip"}, GITLAB_ZIP)
    done = run(p["merge"]["script"])
    assert "compare previous merged" in done.calls, done.stdout + done.stderr
    assert done.returncode == 1
    assert lab("ci", "github", "nightly", "--venv", str(venv)).returncode == 2, "GitLab's only"


@pytest.mark.parametrize("venv", ["venv", ".venv", "~/vfio-lab/.venv", ""])
def test_gitlab_a_venv_that_is_no_absolute_path_on_the_runner_is_a_usage_error(venv) -> None:
    done = lab("ci", "gitlab", "nightly", "--venv", venv)
    assert done.returncode == 2, done.stdout
    assert f"argument --venv: {venv!r} is not an absolute path" in done.stderr
    assert "each job runs in a checkout of its own" in done.stderr and done.stdout == ""


def github_env(api: FakeApi) -> dict[str, str]:
    return {
        "GITHUB_API_URL": api.url,
        "GITHUB_REPOSITORY": "o/r",
        "GITHUB_WORKFLOW_REF": "o/r/.github/workflows/nightly.yml@refs/heads/main",
        "GITHUB_REF_NAME": "main",
        "GITHUB_TOKEN": "gh-token",
    }


RUNS = "/repos/o/r/actions/workflows/nightly.yml/runs?status=success&branch=main&per_page=1"
ARTIFACTS = "/repos/o/r/actions/runs/7/artifacts?name=merged"


def github_api(api: FakeApi, blob: bytes = b"") -> None:
    """A successful run 7 whose `merged` artifact redirects to storage that, like S3 or
    Azure, refuses a request carrying a foreign Authorization header."""
    runs = {"workflow_runs": [{"id": 7}]}
    artifacts = {"artifacts": [{"expired": False, "archive_download_url":
                 f"{api.url}/repos/o/r/actions/artifacts/3/zip"}]}  # fmt: skip
    api.routes[RUNS] = (200, {}, json.dumps(runs).encode())
    api.routes[ARTIFACTS] = (200, {}, json.dumps(artifacts).encode())
    api.routes["/repos/o/r/actions/artifacts/3/zip"] = (302, {"Location": f"{api.url}/blob"}, b"")
    api.routes["/blob"] = lambda headers: (
        (400, {}, b"Authorization not allowed") if "authorization" in headers else (200, {}, blob)
    )


def github_merge(wf: dict[str, Any], run: Callable[..., Any]) -> int:
    """The merge job's steps after the download, as GitHub runs them: each in its own
    `bash -eo pipefail`, one without `if: always()` only while every step before it passed;
    the job's result."""
    failed = False
    steps = wf["jobs"]["merge"]["steps"]
    start = next(i for i, s in enumerate(steps) if "download-artifact" in s.get("uses", ""))
    for step in steps[start + 1 :]:
        if "run" in step and (not failed or step.get("if", "").startswith("always()")):
            failed |= run([step["run"]]).returncode != 0
    return 1 if failed else 0


def test_github_a_previous_night_that_cannot_be_fetched_fails_the_night(tmp_path, api) -> None:
    api.routes[RUNS] = (500, {}, b"")
    run = job(tmp_path, github_env(api))
    assert github_merge(emitted("github"), run) == 1


def test_github_a_regression_against_the_previous_night_fails_it(tmp_path, api) -> None:
    github_api(api, zipped(RUN))
    run = job(tmp_path, github_env(api), COMPARE_EXIT="1")
    assert github_merge(emitted("github"), run) == 1
    assert "compare previous merged" in run([]).calls
    assert (tmp_path / "job" / "previous" / "c" / "console.log").exists()


def test_github_a_first_night_passes_on_its_own_results(tmp_path, api) -> None:
    api.routes[RUNS] = (200, {}, b'{"total_count": 0, "workflow_runs": []}')
    run = job(tmp_path, github_env(api))
    assert github_merge(emitted("github"), run) == 0
    assert not any(c.startswith("compare") for c in run([]).calls)


def test_github_a_failing_cache_key_fails_its_step(tmp_path) -> None:
    wf = emitted("github", "--shards", "2")
    step = next(s for s in wf["jobs"]["shard"]["steps"] if s.get("id") == "key")
    line = step["run"].replace("${{ matrix.shard }}", "1")
    out = tmp_path / "out"
    run = job(tmp_path, {"GITHUB_OUTPUT": str(out)})
    assert run([line]).returncode == 0
    assert out.read_text() == "key=0123456789abcdef\n"
    assert run([line], KEY_EXIT="3").returncode == 3, "the cache would be keyed by nothing"


# -- fetch-previous, on its own ------------------------------------------------------------


def test_gitlab_fetch_unpacks_the_merged_run_into_dest(tmp_path, api) -> None:
    api.routes[GITLAB_ARTIFACTS.replace("main", "feature%2Fx")] = (200, {}, GITLAB_ZIP)
    env = {**gitlab_env(api), "CI_COMMIT_REF_NAME": "feature/x"}
    fetched = previous.fetch("gitlab", env, tmp_path / "previous")
    assert fetched.run == tmp_path / "previous"
    assert (fetched.run / "summary.json").read_text() == RUN["summary.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previous"], "no leftovers"


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        ((500, {}, b"oops"), "HTTP 500"),
        ((403, {}, b"forbidden"), "HTTP 403"),
        ((200, {}, b"<html>a login page</html>"), "not a zip archive"),
        ((200, {}, zipped({"merged/console.log": ""})), "no merged/summary.json"),
        ((200, {}, zipped({"summary.json": "{}"})), "no merged/summary.json"),
    ],
)
def test_gitlab_fetch_fails_naming_anything_but_a_run_or_a_404(
    tmp_path, api, answer, named
) -> None:
    api.routes[GITLAB_ARTIFACTS] = answer
    with pytest.raises(FetchFailed, match=named) as e:
        previous.fetch("gitlab", gitlab_env(api), tmp_path / "previous")
    assert GITLAB_ARTIFACTS in str(e.value)
    assert list(tmp_path.iterdir()) == [], "nothing half-fetched is left"


def test_a_fetch_from_an_api_that_is_not_there_fails(tmp_path) -> None:
    env = gitlab_env(FakeApi("http://127.0.0.1:9"))  # discard: nothing listens
    with pytest.raises(FetchFailed, match=re.escape("127.0.0.1:9")):
        previous.fetch("gitlab", env, tmp_path / "previous")


def test_github_fetch_keeps_the_token_from_storage(tmp_path, api) -> None:
    github_api(api, zipped(RUN))
    fetched = previous.fetch("github", github_env(api), tmp_path / "previous")
    assert fetched.run is not None and (fetched.run / "c" / "console.log").exists()
    sent = {path: headers.get("authorization") for path, headers in api.requests}
    assert sent[RUNS] == sent[ARTIFACTS] == "Bearer gh-token"
    assert sent["/blob"] is None


@pytest.mark.parametrize(
    ("artifacts", "why"),
    [
        ({"artifacts": []}, "run 7 of nightly.yml has no unexpired merged artifact"),
        (
            {"artifacts": [{"expired": True}]},
            "run 7 of nightly.yml has no unexpired merged artifact",
        ),
    ],
)
def test_github_a_run_without_its_artifact_is_no_previous_night(tmp_path, api, artifacts, why):
    github_api(api)
    api.routes[ARTIFACTS] = (200, {}, json.dumps(artifacts).encode())
    fetched = previous.fetch("github", github_env(api), tmp_path / "previous")
    assert (fetched.run, fetched.why) == (None, why)
    assert not (tmp_path / "previous").exists()


def test_github_an_answer_that_is_no_list_of_runs_fails(tmp_path, api) -> None:
    api.routes[RUNS] = (200, {}, b'{"message": "Bad credentials"}')
    with pytest.raises(FetchFailed, match="workflow_runs"):
        previous.fetch("github", github_env(api), tmp_path / "previous")


def test_the_fetch_command_says_what_happened_and_exits_as_the_lab_does(tmp_path, api) -> None:
    env = {**os.environ, **gitlab_env(api)}
    first = lab("ci", "fetch-previous", "gitlab", str(tmp_path / "p"), env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout == (
        "no previous night to compare with: no successful pipeline of main has merge job "
        "artifacts; the comparison is skipped\n"
    )
    api.routes[GITLAB_ARTIFACTS] = (500, {}, b"")
    broken = lab("ci", "fetch-previous", "gitlab", str(tmp_path / "p"), env=env)
    assert broken.returncode == 3 and "HTTP 500" in broken.stderr
    outside = {k: v for k, v in env.items() if not k.startswith("CI_")}
    usage = lab("ci", "fetch-previous", "gitlab", str(tmp_path / "p"), env=outside)
    assert usage.returncode == 2 and "CI_API_V4_URL, CI_PROJECT_ID" in usage.stderr
    (tmp_path / "p").mkdir()
    assert lab("ci", "fetch-previous", "gitlab", str(tmp_path / "p"), env=env).returncode == 2


# -- shards: keys and time limits ----------------------------------------------------------


def test_each_shard_is_keyed_by_its_own_cells() -> None:
    wf = emitted("github", "--shards", "3")
    key = next(s for s in wf["jobs"]["shard"]["steps"] if s.get("id") == "key")
    assert "cache-key nightly --shard ${{ matrix.shard }}/3" in key["run"]
    p = emitted("gitlab", "--shards", "3")
    for k in (1, 2, 3):
        assert f"key=$(.venv/bin/vfio-lab cache-key nightly --shard {k}/3)" in p["plan"]["script"]
        assert p[f"shard-{k}"]["cache"][0]["key"] == f"vfio-lab-shard{k}-$ARTIFACT_KEY_{k}"


def test_the_time_limits_are_the_shards_estimates(tmp_path: Path) -> None:
    cells = scenario.expand(scenario.load(scenario.locate("nightly")))
    limits = [minutes(s) for s in split(cells, 4)]
    p = emitted("gitlab", "--shards", "4")
    assert [p[f"shard-{k}"]["timeout"] for k in (1, 2, 3, 4)] == [f"{m} minutes" for m in limits]
    assert all(p[f"shard-{k}"]["tags"] == ["vfio-lab-privileged"] for k in (1, 2, 3, 4))
    assert emitted("github", "--shards", "4")["jobs"]["shard"]["timeout-minutes"] == max(limits)
    one = lab("ci", "github", "nightly")
    assert yaml.safe_load(one.stdout)["jobs"]["shard"]["timeout-minutes"] == 360
    assert "use more --shards" in one.stderr
    run = tmp_path / "last"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"cells": [
        {"name": c.name, "wall_s": 60.0} for c in cells]}))  # fmt: skip
    timed = emitted("gitlab", "--shards", "4", "--durations", str(run))
    weights = {c.name: 60.0 for c in cells}
    assert timed["shard-1"]["timeout"] == f"{minutes(split(cells, 4)[0], weights)} minutes"
    assert timed["shard-1"]["timeout"] != p["shard-1"]["timeout"]


def test_bad_shard_counts_and_scenarios_are_usage_errors(tmp_path: Path) -> None:
    assert lab("ci", "github", "nightly", "--shards", "0").returncode == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("machine:\n  memroy: 4G\n")
    done = lab("ci", "gitlab", str(bad))
    assert done.returncode == 2 and "memroy" in done.stderr


def git(tree: Path, *args: str) -> None:
    subprocess.run(["git", "-C", tree, "-c", "user.email=a@b", "-c", "user.name=a", *args],
                   check=True, capture_output=True)  # fmt: skip


def kernel_tree(path: Path) -> Path:
    path.mkdir()
    (path / "Makefile").write_text("VERSION = 7\n")
    (path / "Kconfig").write_text('mainmenu "x"\n')
    git(path, "init", "-q")
    git(path, "add", ".")
    git(path, "commit", "-qm", "one")
    return path


def test_the_artifact_key_follows_the_kernel_and_the_config(tmp_path: Path) -> None:
    tree = kernel_tree(tmp_path / "linux")
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


def test_a_kernel_bump_changes_only_its_own_shards_key(tmp_path: Path) -> None:
    one, two = kernel_tree(tmp_path / "one"), kernel_tree(tmp_path / "two")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"kernels: ['local:{one}', 'local:{two}']\nfragments: [iommufd]\n")
    env = {**os.environ, "VFIO_LAB_CACHE": str(tmp_path / "cache")}

    def keys() -> list[str]:
        done = [lab("cache-key", str(spec), "--shard", f"{k}/2", env=env) for k in (1, 2)]
        assert all(d.returncode == 0 for d in done), [d.stderr for d in done]
        return [d.stdout.strip() for d in done]

    before = keys()
    assert before[0] != before[1]
    listed = lab("list", str(spec), "--shard", "2/2").stdout
    bumped = two if "local-two" in listed else one
    (bumped / "Makefile").write_text("VERSION = 8\n")
    after = keys()
    changed = [k for k in (0, 1) if after[k] != before[k]]
    assert changed == [1], "a bump in one tree invalidated the other shard's cache"
