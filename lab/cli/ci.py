"""`vfio-lab ci github|gitlab` (a nightly pipeline for a scenario) and `vfio-lab cache-key`.

The pipeline: one job per shard, each with its cache of the lab's artifacts keyed by
`vfio-lab cache-key` (so a runner whose cache matches builds nothing, and one whose
cache is older starts from it); a merge job making one run of the shards' runs; and a
compare against the previous successful night's merged run, gating on regressions.
Jobs run as root in a Debian container, as the lab's CI does.
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from lab.cli.common import load_scenario, only_arg, scenario_arg, selected
from lab.core.cache import Cache
from lab.core.errors import UsageError
from lab.core.exitcodes import EXIT_OK
from lab.run.artifactkey import artifact_key

IMAGE = "debian:bookworm"
TOOLS = "git make python3 python3-venv sudo ca-certificates"
CACHE = "~/.cache/vfio-lab"
LAB = ".venv/bin/vfio-lab"
DEFAULT_CRON = "0 2 * * *"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    key = sub.add_parser(
        "cache-key",
        help="the key of every artifact a scenario's cells need (for a CI cache), found "
        "without building anything",
    )
    scenario_arg(key)
    only_arg(key)
    key.set_defaults(func=cmd_cache_key)

    ci = sub.add_parser("ci", help="print a nightly CI pipeline for a scenario")
    ci.add_argument("engine", choices=sorted(ENGINES), help="the CI engine")
    scenario_arg(ci)
    ci.add_argument("--shards", type=int, default=1, metavar="N", help="runners (default 1)")
    ci.add_argument("--cron", default=DEFAULT_CRON, help=f"schedule (default {DEFAULT_CRON!r})")
    ci.set_defaults(func=cmd_ci)


def cmd_cache_key(args: argparse.Namespace) -> int:
    s = load_scenario(args.scenario)
    print(artifact_key(selected(s, args.only), Cache()))
    return EXIT_OK


def cmd_ci(args: argparse.Namespace) -> int:
    if args.shards < 1:
        raise UsageError(f"--shards {args.shards}: at least 1")
    load_scenario(args.scenario)  # a scenario that does not load is no pipeline
    pipeline = ENGINES[args.engine](args.scenario, args.shards, args.cron)
    print(f"# vfio-lab ci {args.engine} {args.scenario} --shards {args.shards}")
    if args.engine == "gitlab":
        print(f"# Run it nightly from a pipeline schedule ({args.cron}): CI/CD > Schedules.")
    print(yaml.dump(pipeline, Dumper=_Plain, sort_keys=False, width=100), end="")
    return EXIT_OK


class _Plain(yaml.SafeDumper):
    """Each job written out in full: no YAML anchors for the parts jobs share."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _setup() -> list[str]:
    return [f"apt-get update -q && apt-get install -y -q {TOOLS} gh", "make setup"]


def github(scenario: str, shards: int, cron: str) -> dict[str, Any]:
    shard = "${{ matrix.shard }}/" + str(shards)
    container = {"image": IMAGE, "options": "--privileged"}
    tools = {"name": "tools", "run": f"apt-get update -q && apt-get install -y -q {TOOLS} gh"}
    checkout = {"uses": "actions/checkout@v4"}
    return {
        "name": f"vfio-lab nightly: {scenario}",
        "on": {"schedule": [{"cron": cron}], "workflow_dispatch": {}},
        "permissions": {"contents": "read", "actions": "read"},
        "jobs": {
            "shard": {
                "name": f"shard {shard}",
                "runs-on": "ubuntu-24.04",
                "container": container,
                "timeout-minutes": 360,
                "strategy": {"fail-fast": False, "matrix": {"shard": list(range(1, shards + 1))}},
                "steps": [
                    tools,
                    checkout,
                    {"name": "set up the lab", "run": "make setup"},
                    {
                        "name": "artifact key",
                        "id": "key",
                        "run": f'echo "key=$({LAB} cache-key {scenario})" >> "$GITHUB_OUTPUT"',
                    },
                    {
                        "uses": "actions/cache@v4",
                        "with": {
                            "path": CACHE,
                            "key": "vfio-lab-${{ matrix.shard }}-${{ steps.key.outputs.key }}",
                            "restore-keys": "vfio-lab-${{ matrix.shard }}-",
                        },
                    },
                    {
                        "name": "run the shard",
                        "run": f"{LAB} run {scenario} --shard {shard} --results results",
                    },
                    {
                        "uses": "actions/upload-artifact@v4",
                        "if": "always()",
                        "with": {"name": "shard-${{ matrix.shard }}", "path": "results/2*"},
                    },
                ],
            },
            "merge": {
                "needs": "shard",
                "if": "always()",
                "runs-on": "ubuntu-24.04",
                "container": container,
                "steps": [
                    tools,
                    checkout,
                    {"name": "set up the lab", "run": "make venv"},
                    {
                        "uses": "actions/download-artifact@v4",
                        "with": {"pattern": "shard-*", "path": "shards"},
                    },
                    {
                        "name": "merge the shards",
                        "id": "merge",
                        "run": f"{LAB} merge shards/shard-*/2* --into merged",
                    },
                    {
                        "name": "the previous successful night",
                        "if": "always()",
                        "env": {"GH_TOKEN": "${{ github.token }}"},
                        "run": PREVIOUS_GITHUB,
                    },
                    {
                        "name": "compare with it: regressions fail the night",
                        "if": "always() && hashFiles('previous/summary.json') != ''",
                        "run": f"{LAB} compare previous merged",
                    },
                    {
                        "uses": "actions/upload-artifact@v4",
                        "if": "always()",
                        "with": {"name": "merged", "path": "merged"},
                    },
                ],
            },
        },
    }


PREVIOUS_GITHUB = """\
id=$(gh run list -R "$GITHUB_REPOSITORY" --workflow "$GITHUB_WORKFLOW" --status success \\
  --limit 1 --json databaseId --jq '.[0].databaseId')
if [ -n "$id" ]; then gh run download -R "$GITHUB_REPOSITORY" "$id" -n merged -D previous; fi
"""


def gitlab(scenario: str, shards: int, cron: str) -> dict[str, Any]:
    cache = "vfio-lab-${SHARD}"
    return {
        "stages": ["plan", "shard", "merge"],
        "default": {"image": IMAGE, "before_script": _setup()},
        "variables": {"VFIO_LAB_CACHE": "$CI_PROJECT_DIR/.vfio-lab-cache"},
        "plan": {
            "stage": "plan",
            "script": [f'echo "ARTIFACT_KEY=$({LAB} cache-key {scenario})" > plan.env'],
            "artifacts": {"reports": {"dotenv": "plan.env"}},
        },
        "shard": {
            "stage": "shard",
            "needs": ["plan"],
            "parallel": {"matrix": [{"SHARD": [str(k) for k in range(1, shards + 1)]}]},
            "cache": [
                {
                    "key": f"{cache}-$ARTIFACT_KEY",
                    "fallback_keys": [f"{cache}-latest"],
                    "paths": [".vfio-lab-cache/"],
                },
                {"key": f"{cache}-latest", "paths": [".vfio-lab-cache/"], "policy": "push"},
            ],
            "script": [f"{LAB} run {scenario} --shard $SHARD/{shards} --results results"],
            "artifacts": {"when": "always", "paths": ["results/"]},
        },
        "merge": {
            "stage": "merge",
            "when": "always",
            "script": [
                # The merged run's verdict is the job's, after the comparison has run.
                f"{LAB} merge results/2* --into merged || echo $? > merged.status",
                PREVIOUS_GITLAB,
                f"if [ -d previous ]; then {LAB} compare previous/merged merged; fi",
                "exit $(cat merged.status 2>/dev/null || echo 0)",
            ],
            "artifacts": {"when": "always", "paths": ["merged/"]},
        },
    }


# The last successful pipeline's merged run, through GitLab's job artifacts API.
PREVIOUS_GITLAB = (
    'curl -sfL -o previous.zip -H "JOB-TOKEN: $CI_JOB_TOKEN" '
    '"$CI_API_V4_URL/projects/$CI_PROJECT_ID/jobs/artifacts/$CI_DEFAULT_BRANCH/download?job=merge" '
    # No `cd`: GitLab runs a job's script lines in one shell, and the lines after this
    # one work from the project directory.
    "&& python3 -m zipfile -e previous.zip previous || true"
)

ENGINES = {"github": github, "gitlab": gitlab}
