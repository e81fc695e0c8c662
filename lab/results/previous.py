"""The previous successful night's merged run, fetched from the CI engine's own API with
nothing but the standard library (a CI job's container has Python, not curl).

"There is none" and "it could not be had" are kept apart: the engine saying there is no
such night (GitLab's 404; GitHub listing no successful run, or a run whose artifact is
gone) is a first night, and the caller skips the comparison saying so; any other answer
(a 500, a refused token, a network fault, an archive that is no run) fails the fetch,
since a gate that skips its comparison whenever the fetch breaks passes every night.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lab.core.errors import InfraError, UsageError
from lab.core.files import HostFile, blaming, make_dir

MERGE_JOB = "merge"  # GitLab: the job whose artifacts hold the merged run
MERGED = "merged"  # the merged run's directory, and its artifact's name on GitHub
TIMEOUT_S = 60.0


class FetchFailed(InfraError):
    """The engine's API did not answer as it does for a night that is there or not."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"fetching the previous night: {url}: {reason}")


@dataclass(frozen=True)
class Fetched:
    """Where the previous night's run now is, or why there is none (`run` None)."""

    run: Path | None
    why: str


@dataclass(frozen=True)
class Api:
    """An engine's API with the job's token. The token is sent only to the host it is
    for: a download redirected to object storage does not carry it (storage refuses a
    request with a foreign Authorization, and should never see the token)."""

    token_header: str
    token: str
    accept: dict[str, str] = field(default_factory=dict)

    @contextlib.contextmanager
    def _open(self, url: str) -> Iterator[IO[bytes] | None]:
        """The answer's body, or None for a 404; anything else but a 200 is FetchFailed,
        as is a body that breaks off."""
        request = urllib.request.Request(url, headers=self.accept)
        request.add_unredirected_header(self.token_header, self.token)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                yield response
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise FetchFailed(url, f"HTTP {e.code} {e.reason}") from None
            yield None
        except (
            urllib.error.URLError,
            http.client.HTTPException,
            ConnectionError,
            TimeoutError,
        ) as e:
            raise FetchFailed(url, str(getattr(e, "reason", e)) or type(e).__name__) from None

    def get_json(self, url: str) -> Any:
        with self._open(url) as body:
            if body is None:
                return None
            try:
                return json.loads(body.read())
            except ValueError as e:
                raise FetchFailed(url, f"not JSON: {e}") from None

    def download(self, url: str, path: Path) -> bool:
        """The body into `path`; False for a 404."""
        with self._open(url) as body:
            if body is None:
                return False
            with HostFile(path, "wb") as out:
                shutil.copyfileobj(body, out)
        return True


def _env(env: Mapping[str, str], *names: str) -> list[str]:
    missing = [n for n in names if not env.get(n)]
    if missing:
        raise UsageError(
            f"fetch-previous runs in a CI job: {', '.join(missing)} not set (the engine sets it)"
        )
    return [env[n] for n in names]


def fetch(engine: str, env: Mapping[str, str], dest: Path) -> Fetched:
    """The previous night's run into `dest`, through `engine`'s API as `env` (the job's
    environment) reaches it."""
    if dest.exists():
        raise UsageError(f"{dest} exists: fetch-previous makes it")
    make_dir(dest.parent)
    with tempfile.TemporaryDirectory(prefix=".previous-", dir=dest.parent) as tmp:
        return ENGINES[engine](env, Path(tmp), dest)


def gitlab(env: Mapping[str, str], tmp: Path, dest: Path) -> Fetched:
    """The merge job's artifacts of the last successful pipeline of this branch (GitLab's
    job artifacts API; its archive holds `merged/`)."""
    api_url, project, ref, token = _env(
        env, "CI_API_V4_URL", "CI_PROJECT_ID", "CI_COMMIT_REF_NAME", "CI_JOB_TOKEN"
    )
    url = (
        f"{api_url}/projects/{urllib.parse.quote(project, safe='')}/jobs/artifacts/"
        f"{urllib.parse.quote(ref, safe='')}/download?job={MERGE_JOB}"
    )
    if not Api("JOB-TOKEN", token).download(url, tmp / ARCHIVE):
        return Fetched(None, f"no successful pipeline of {ref} has {MERGE_JOB} job artifacts")
    _unpack(url, tmp, MERGED, dest)
    return Fetched(
        dest, f"the {MERGE_JOB} job's artifacts of the last successful pipeline of {ref}"
    )


def github(env: Mapping[str, str], tmp: Path, dest: Path) -> Fetched:
    """The `merged` artifact of the workflow's last successful run on this branch."""
    api_url, repo, workflow_ref, ref, token = _env(
        env, "GITHUB_API_URL", "GITHUB_REPOSITORY", "GITHUB_WORKFLOW_REF", "GITHUB_REF_NAME",
        "GITHUB_TOKEN",
    )  # fmt: skip
    # owner/repo/.github/workflows/nightly.yml@refs/heads/main: the API takes the file name.
    workflow = workflow_ref.partition("@")[0].rsplit("/", 1)[-1]
    api = Api(
        "Authorization",
        f"Bearer {token}",
        {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"},
    )
    query = urllib.parse.urlencode({"status": "success", "branch": ref, "per_page": 1})
    runs_url = f"{api_url}/repos/{repo}/actions/workflows/{workflow}/runs?{query}"
    runs = _listed(runs_url, api.get_json(runs_url), "workflow_runs")
    if not runs:
        return Fetched(None, f"no successful run of {workflow} on {ref}")
    run = runs[0].get("id")
    artifacts_url = f"{api_url}/repos/{repo}/actions/runs/{run}/artifacts?name={MERGED}"
    artifacts = _listed(artifacts_url, api.get_json(artifacts_url), "artifacts")
    live = [a for a in artifacts if not a.get("expired")]
    if not live:
        return Fetched(None, f"run {run} of {workflow} has no unexpired {MERGED} artifact")
    url = str(live[0].get("archive_download_url"))
    if not api.download(url, tmp / ARCHIVE):
        return Fetched(None, f"run {run}'s {MERGED} artifact is gone")
    _unpack(url, tmp, "", dest)
    return Fetched(dest, f"the {MERGED} artifact of run {run} of {workflow} on {ref}")


def _listed(url: str, document: Any, name: str) -> list[dict[str, Any]]:
    """The objects an API answer lists under `name`; a 404 lists none."""
    if document is None:
        return []
    value = document.get(name) if isinstance(document, dict) else None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise FetchFailed(url, f"the answer has no list of objects {name!r}")
    return value


def _unpack(url: str, tmp: Path, inside: str, dest: Path) -> None:
    """The run the archive holds (in its folder `inside`) moved to `dest`."""
    try:
        with zipfile.ZipFile(tmp / ARCHIVE) as z, blaming(tmp):
            z.extractall(tmp / "x")
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise FetchFailed(url, f"not a zip archive: {e}") from None
    run = tmp / "x" / inside
    if not (run / "summary.json").is_file():
        raise FetchFailed(url, f"the archive has no {Path(inside, 'summary.json')}: no run")
    with blaming(dest):
        shutil.move(run, dest)


ARCHIVE = "archive.zip"
ENGINES: dict[str, Callable[[Mapping[str, str], Path, Path], Fetched]] = {
    "gitlab": gitlab,
    "github": github,
}
