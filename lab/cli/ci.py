"""`vfio-lab ci github|gitlab` (a nightly pipeline for a scenario), `vfio-lab ci
fetch-previous` (what its merge job calls) and `vfio-lab cache-key`.

The pipeline: one job per shard, each with its cache of the lab's artifacts keyed by
`vfio-lab cache-key --shard K/N` (so a runner whose cache matches builds nothing, one
whose cache is older starts from it, and a kernel bump costs only its own shard) and
saved whatever the night's results; a merge job making one run of the shards' runs; and
a compare against the previous successful night's merged run, gating on regressions.
Jobs run as root in a privileged Debian container, as the lab's CI does; GitLab's may
instead run on a shell runner whose host is set up already (`--venv`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from lab.cli.common import Parser, load_scenario, only_arg, scenario_arg
from lab.cli.run import shard_args, shard_selection
from lab.core.cache import Cache
from lab.core.errors import UsageError
from lab.core.exitcodes import EXIT_OK
from lab.model import scenario
from lab.model.shards import durations, minutes, split
from lab.results import previous
from lab.run.artifactkey import artifact_key

IMAGE = "debian:bookworm"
TOOLS = "git make python3 python3-venv sudo ca-certificates"
CACHE = "~/.cache/vfio-lab"
VENV = ".venv"  # where `make setup` puts the lab, in the job's checkout
DEFAULT_CRON = "0 2 * * *"
GITHUB_MAX_MIN = 360  # the most a job on a GitHub-hosted runner may take
# GitLab: the tag of the runners that may take a shard. Docker executor with
# `privileged = true`: mmdebstrap makes namespaces and mounts /proc and /sys in the root
# filesystem it builds, which Docker's default profile forbids even to root, and the
# container needs /dev/kvm where the host has it.
RUNNER_TAG = "vfio-lab-privileged"
PREVIOUS = "previous"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    key = sub.add_parser(
        "cache-key",
        help="the key of every artifact a scenario's cells (or one shard's) need, for a CI "
        "cache, found without building anything",
    )
    scenario_arg(key)
    only_arg(key)
    shard_args(key)
    key.set_defaults(func=cmd_cache_key)

    ci = sub.add_parser("ci", help="a nightly CI pipeline for a scenario, and what it calls")
    what = ci.add_subparsers(dest="ci_command", required=True, parser_class=Parser)
    for engine in sorted(ENGINES):
        p = what.add_parser(engine, help=f"print a nightly {engine} pipeline for a scenario")
        scenario_arg(p)
        p.add_argument("--shards", type=int, default=1, metavar="N", help="runners (default 1)")
        p.add_argument("--cron", default=DEFAULT_CRON, help=f"schedule (default {DEFAULT_CRON!r})")
        p.add_argument(
            "--durations",
            type=Path,
            metavar="RUN_DIR",
            help="estimate each shard's time limit from this earlier run's cell wall times",
        )
        if engine == "gitlab":
            p.add_argument(
                "--venv",
                type=_runner_path,
                metavar="DIR",
                help="the jobs run on a shell runner whose host is set up already (`make "
                "setup`): no image, nothing installed, the lab of the virtualenv DIR on the "
                "runner, an absolute path (default: each job sets up .venv in a "
                "debian:bookworm container)",
            )
        p.set_defaults(func=cmd_ci, engine=engine)
    fetch = what.add_parser(
        "fetch-previous",
        help="in a pipeline's merge job: the previous successful night's merged run into "
        "DEST; when the engine has none (a first night), DEST is not made and it says why",
    )
    fetch.add_argument("engine", choices=sorted(previous.ENGINES))
    fetch.add_argument("dest", type=Path)
    fetch.set_defaults(func=cmd_fetch_previous)


def _runner_path(text: str) -> str:
    """A path on the runner, not here: only its form can be checked. A relative one (or
    `~`, which the jobs' quoting keeps from the shell) would name a directory in each
    job's own checkout, where no lab is set up."""
    if not PurePosixPath(text).is_absolute():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an absolute path: each job runs in a checkout of its own; "
            "give the runner's virtualenv as it is on the runner, e.g. /opt/vfio-lab/.venv"
        )
    return text


def cmd_cache_key(args: argparse.Namespace) -> int:
    s = load_scenario(args.scenario)
    cells = shard_selection(s, args)[2]
    print(artifact_key(cells, Cache()))
    return EXIT_OK


@dataclass(frozen=True)
class Plan:
    scenario: str
    shards: int
    cron: str
    limits: list[int]  # each shard's time limit in minutes
    venv: str | None = None  # a set-up runner's lab; None: each job sets up VENV

    @property
    def lab(self) -> str:
        """The lab's command in a job's shell line."""
        return shlex.quote(f"{self.venv or VENV}/bin/vfio-lab")


def cmd_ci(args: argparse.Namespace) -> int:
    if args.shards < 1:
        raise UsageError(f"--shards {args.shards}: at least 1")
    s = load_scenario(args.scenario)  # a scenario that does not load is no pipeline
    # The jobs split as `run --shard K/N` does (by count); recorded times only say how
    # long each shard may take.
    weights = durations(args.durations) if args.durations is not None else None
    limits = [minutes(cells, weights) for cells in split(scenario.expand(s), args.shards)]
    plan = Plan(args.scenario, args.shards, args.cron, limits, getattr(args, "venv", None))
    pipeline = ENGINES[args.engine](plan)
    venv = "" if plan.venv is None else f" --venv {shlex.quote(plan.venv)}"
    print(f"# vfio-lab ci {args.engine} {args.scenario} --shards {args.shards}{venv}")
    if args.engine == "gitlab":
        runner = (
            "a Docker executor with\n# `privileged = true` (mmdebstrap makes namespaces and "
            "mounts /proc in them)."
            if plan.venv is None
            else f"a shell executor on a host\n# set up with `make setup`, the lab in {plan.venv}."
        )
        print(f"# Run it nightly from a pipeline schedule ({args.cron}): CI/CD > Schedules.")
        print(f"# The shard jobs need a runner tagged {RUNNER_TAG}: {runner}")
    elif max(limits) > GITHUB_MAX_MIN:
        print(
            f"vfio-lab: warning: a shard may take {max(limits)} minutes, more than a GitHub-"
            f"hosted job's {GITHUB_MAX_MIN}: use more --shards",
            file=sys.stderr,
        )
    print(yaml.dump(pipeline, Dumper=_Plain, sort_keys=False, width=100), end="")
    return EXIT_OK


def cmd_fetch_previous(args: argparse.Namespace) -> int:
    fetched = previous.fetch(args.engine, os.environ, args.dest)
    if fetched.run is None:
        print(f"no previous night to compare with: {fetched.why}; the comparison is skipped")
    else:
        print(f"the previous night: {fetched.why}, in {fetched.run}")
    return EXIT_OK


class _Plain(yaml.SafeDumper):
    """Each job written out in full: no YAML anchors for the parts jobs share; a script of
    several lines as a block, as it is run."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, "|" if "\n" in text else None)


_Plain.add_representer(str, _text)


INSTALL_TOOLS = f"apt-get update -q && apt-get install -y -q {TOOLS}"


def compare_line(lab: str, on_failure: str = "") -> str:
    """A regression fails the night; a first night (nothing fetched) has nothing to compare."""
    return f"if [ -d {PREVIOUS} ]; then {lab} compare {PREVIOUS} merged{on_failure}; fi"


# GitLab runs a job's lines in one shell under `set -e`: the first to fail would end the
# job with its code, and hide what the steps before it came to (a merge's exit 3 for
# missing cells under compare's 1; a merge's 1 under a failed fetch's 3). So each step
# notes its failure, the next runs all the same, and the last line names each failed step
# and exits as the lab weighs them: 1 (tests went wrong, or regressed) outweighs the
# others, as a cell whose tests went wrong outweighs one that could not run; else the
# first step's failure, which those after it may follow from.
STEPS = "steps.status"


def noted(step: str) -> str:
    """What a job's line appends, so that its failure is noted and not the job's end
    (`step`: one word)."""
    return f' || echo "{step} $?" >> {STEPS}'


WEIGH_STEPS = (
    'code=0; while read -r step status; do echo "vfio-lab $step exited $status"; '
    'if [ "$code" = 0 ] || [ "$status" = 1 ]; then code=$status; fi; '
    f'done < {STEPS}; echo "the job exits $code"; exit $code'
)


def github(plan: Plan) -> dict[str, Any]:
    shard = "${{ matrix.shard }}/" + str(plan.shards)
    container = {"image": IMAGE, "options": "--privileged"}
    tools = {"name": "tools", "run": INSTALL_TOOLS}
    checkout = {"uses": "actions/checkout@v4"}
    keyed = "vfio-lab-${{ matrix.shard }}-"
    return {
        "name": f"vfio-lab nightly: {plan.scenario}",
        "on": {"schedule": [{"cron": plan.cron}], "workflow_dispatch": {}},
        "permissions": {"contents": "read", "actions": "read"},
        "jobs": {
            "shard": {
                "name": f"shard {shard}",
                "runs-on": "ubuntu-24.04",
                "container": container,
                "timeout-minutes": min(max(plan.limits), GITHUB_MAX_MIN),
                "strategy": {
                    "fail-fast": False,
                    "matrix": {"shard": list(range(1, plan.shards + 1))},
                },
                "steps": [
                    tools,
                    checkout,
                    {"name": "set up the lab", "run": "make setup"},
                    {
                        "name": "artifact key of this shard's cells",
                        "id": "key",
                        # An assignment, so that a failing cache-key fails the step.
                        "run": f"key=$({plan.lab} cache-key {plan.scenario} --shard {shard})\n"
                        'echo "key=$key" >> "$GITHUB_OUTPUT"\n',
                    },
                    {
                        # GitHub's caches cannot be overwritten: each night saves its own
                        # (the run id), and the newest of this key, else of this shard, is
                        # restored.
                        "name": "restore the cache",
                        "id": "cache",
                        "uses": "actions/cache/restore@v4",
                        "with": {
                            "path": CACHE,
                            "key": keyed + "${{ steps.key.outputs.key }}-${{ github.run_id }}",
                            "restore-keys": f"{keyed}${{{{ steps.key.outputs.key }}}}-\n{keyed}",
                        },
                    },
                    {
                        "name": "run the shard",
                        "run": f"{plan.lab} run {plan.scenario} --shard {shard} --results results",
                    },
                    {
                        "name": "save the cache, whatever the results",
                        "uses": "actions/cache/save@v4",
                        "if": "always() && steps.cache.outputs.cache-primary-key != ''",
                        "with": {
                            "path": CACHE,
                            "key": "${{ steps.cache.outputs.cache-primary-key }}",
                        },
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
                        "run": f"{plan.lab} merge shards/shard-*/2* --into merged",
                    },
                    {
                        "name": "the previous successful night",
                        "if": "always()",
                        "env": {"GITHUB_TOKEN": "${{ github.token }}"},
                        "run": f"{plan.lab} ci fetch-previous github {PREVIOUS}",
                    },
                    {
                        "name": "compare with it: regressions fail the night",
                        "if": "always()",
                        "run": compare_line(plan.lab),
                    },
                    {
                        "uses": "actions/upload-artifact@v4",
                        "if": "always()",
                        "with": {"name": previous.MERGED, "path": "merged"},
                    },
                ],
            },
        },
    }


def gitlab(plan: Plan) -> dict[str, Any]:
    shards = range(1, plan.shards + 1)
    pipeline: dict[str, Any] = {"stages": ["plan", "shard", "merge"]}
    if plan.venv is None:
        pipeline["default"] = {"image": IMAGE, "before_script": [INSTALL_TOOLS, "make setup"]}
    pipeline |= {
        "variables": {"VFIO_LAB_CACHE": "$CI_PROJECT_DIR/.vfio-lab-cache"},
        "plan": {
            "stage": "plan",
            # GitLab reads a cache key before the job's script: each shard's artifact key
            # comes from this job's dotenv. Assignments, so that a failing cache-key fails.
            "script": [
                line
                for k in shards
                for line in (
                    f"key=$({plan.lab} cache-key {plan.scenario} --shard {k}/{plan.shards})",
                    f'echo "ARTIFACT_KEY_{k}=$key" >> plan.env',
                )
            ],
            "artifacts": {"reports": {"dotenv": "plan.env"}},
        },
    }
    for k in shards:
        cache = f"vfio-lab-shard{k}"
        pipeline[f"shard-{k}"] = {
            "stage": "shard",
            "needs": ["plan"],
            "tags": [RUNNER_TAG],
            "timeout": f"{plan.limits[k - 1]} minutes",
            "cache": [
                {
                    "key": f"{cache}-$ARTIFACT_KEY_{k}",
                    "fallback_keys": [f"{cache}-latest"],
                    "paths": [".vfio-lab-cache/"],
                    "when": "always",
                },
                {
                    "key": f"{cache}-latest",
                    "paths": [".vfio-lab-cache/"],
                    "policy": "push",
                    "when": "always",
                },
            ],
            "script": [
                f"{plan.lab} run {plan.scenario} --shard {k}/{plan.shards} --results results/shard-{k}"
            ],
            "artifacts": {"when": "always", "paths": [f"results/shard-{k}/"]},
        }
    pipeline[previous.MERGE_JOB] = {
        "stage": "merge",
        "needs": [{"job": f"shard-{k}", "artifacts": True} for k in shards],
        "when": "always",
        # No line may leave the project directory: GitLab runs them all in one shell.
        "script": [
            f": > {STEPS}",
            f"{plan.lab} merge results/shard-*/2* --into merged" + noted("merge"),
            # A fetch that fails leaves no previous night: no comparison, a failed job.
            f"{plan.lab} ci fetch-previous gitlab {PREVIOUS}" + noted("fetch-previous"),
            compare_line(plan.lab, noted("compare")),
            WEIGH_STEPS,
        ],
        "artifacts": {"when": "always", "paths": [f"{previous.MERGED}/"]},
    }
    return pipeline


ENGINES = {"github": github, "gitlab": gitlab}
