"""Splitting a scenario's cells into N shards for N CI runners: deterministic, balanced,
and with every kernel source tree in one shard, so each shard builds a kernel once and
its configs share ccache and the build directory.

Balanced by recorded cell durations when a previous run's summary.json is given (a cell
it does not know weighs the mean of those it does), else by cell count; groups are
placed heaviest first on the lightest shard (ties: the lower shard, then file order).

Each run records its ShardPlan, so that merging shards can tell a whole night from part
of one, and the shards of one split from those of another.

A shard's time limit for a CI job is estimated from the same inputs (see `minutes`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.core.cache import file_sha256, tree_digest
from lab.core.errors import UsageError
from lab.model.kernelspec import KERNEL_SOURCES, KernelSpec, LocalTreeKind
from lab.model.scenario import Cell, KernelEntry

_SHARD = re.compile(r"^(\d+)/(\d+)$")


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based, as written: --shard 2/4
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


WHOLE = Shard(1, 1)  # a run without --shard


@dataclass(frozen=True)
class ShardPlan:
    """What a run is part of: shard K of N of the cells its selection (--only) promised,
    of the scenario whose expansion hashes to `scenario_hash`."""

    shard: Shard
    cells: tuple[str, ...]  # every promised cell, over all N shards, in file order
    scenario_hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "shard": str(self.shard),
            "scenario_cells": list(self.cells),
            "scenario_hash": self.scenario_hash,
        }


def plan(
    selection: list[Cell], shard: Shard = WHOLE, trees: Mapping[str, str] | None = None
) -> ShardPlan:
    """`trees`: as scenario_hash takes them."""
    return ShardPlan(shard, tuple(c.name for c in selection), scenario_hash(selection, trees))


def scenario_hash(cells: list[Cell], trees: Mapping[str, str] | None = None) -> str:
    """The cells with everything that decides what they run (kernel, config, machine,
    devices, payload, expectations): two versions of a scenario differ here even where
    their cell names agree.

    `trees` gives each `local:` kernel tree's content identity by its path (the caller
    finds it: a git checkout's state is the artifacts' business): a tree counts by what
    it holds, not by where it is, so an edit between two shards parts them."""
    text = json.dumps(cells, sort_keys=True, default=lambda v: _plain(v, trees or {}))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(value: object, trees: Mapping[str, str]) -> object:
    if isinstance(value, KernelSpec) and value.source == LocalTreeKind.name:
        if value.arg not in trees:
            raise ValueError(f"local:{value.arg}: the scenario hash needs the tree's identity")
        return {"source": value.source, "tree": trees[value.arg], "name": value.name}
    if isinstance(value, KernelEntry) and value.source.startswith(f"{LocalTreeKind.name}:"):
        # The scenario's kernel axis names it again: by its identity too, where a cell
        # builds it (one no selected cell builds decides nothing the run does).
        path = value.source.partition(":")[2]
        value = dataclasses.replace(value, source=f"local:{trees.get(path, path)}")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Fields set after loading (the file's path, its line numbers) are not the scenario.
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Path):
        # A patch or a payload directory counts by its content: runners keep the checkout
        # in other places (GitLab's shell runners each in a directory of their own).
        if value.is_file():
            return f"sha256:{file_sha256(value)}"
        return f"tree:{tree_digest(value)}" if value.is_dir() else str(value)
    raise TypeError(f"{type(value).__name__} in a scenario")


def parse_shard(text: str) -> Shard:
    m = _SHARD.match(text)
    if m is None or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise UsageError(f"{text}: expected K/N with 1 <= K <= N (e.g. 2/4)")
    return Shard(int(m.group(1)), int(m.group(2)))


def durations(summary: Path) -> dict[str, float]:
    """Each cell's wall time in a previous run (its summary.json, or the run directory)."""
    path = summary / "summary.json" if summary.is_dir() else summary
    try:
        cells = json.loads(path.read_text())["cells"]
        return {c["name"]: float(c["wall_s"]) for c in cells if c.get("wall_s")}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"--durations {path}: not a run's summary.json ({e})") from None


def split(
    cells: list[Cell], count: int, weights: dict[str, float] | None = None
) -> list[list[Cell]]:
    """`count` shards of `cells`, each kernel tree's cells together, in file order within
    a shard."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.kernel.label, []).append(cell)
    cell_weight = _weigher(weights, 1.0)

    def weight(group: list[Cell]) -> float:
        return sum(cell_weight(c) for c in group)

    order = sorted(enumerate(groups.values()), key=lambda ig: (-weight(ig[1]), ig[0]))
    loads = [0.0] * count
    members: list[list[Cell]] = [[] for _ in range(count)]
    for _, group in order:
        lightest = min(range(count), key=lambda i: (loads[i], i))
        loads[lightest] += weight(group)
        members[lightest] += group
    position = {c.name: i for i, c in enumerate(cells)}
    return [sorted(m, key=lambda c: position[c.name]) for m in members]


def _weigher(weights: dict[str, float] | None, unrecorded: float) -> Callable[[Cell], float]:
    """A cell's recorded weight; one not recorded weighs the mean of those that are, or
    `unrecorded` when none is."""
    known = [w for w in (weights or {}).values() if w > 0]
    default = sum(known) / len(known) if known else unrecorded
    return lambda cell: (weights or {}).get(cell.name, default)


# A CI job's time limit for a shard: an estimate, generous on purpose, since a job cut
# short by its limit loses the whole shard's results.
SETUP_MIN = 20  # host packages, the virtualenv, the root filesystem (mmdebstrap)
BUILD_MIN = 60  # a cold kernel build per tree built from source (a bump empties its cache)
CELL_MIN = 15  # a cell no earlier run timed: a TCG boot to test-ready and the payload
RECORDED_MARGIN = 2  # a recorded wall time, times this (a slower runner, a colder cache)


def minutes(cells: list[Cell], durations_s: dict[str, float] | None = None) -> int:
    """The estimated limit for a job running `cells`: setup, a cold build of each kernel
    tree built from source, and per cell its recorded wall time with a margin (a cell not
    recorded: the mean of those that are) or, with no record at all, CELL_MIN; rounded up
    to ten minutes."""
    trees = {c.kernel.label for c in cells if KERNEL_SOURCES[c.kernel.source].configurable}
    weigh = _weigher(durations_s, 0.0)
    cells_min = [weigh(c) * RECORDED_MARGIN / 60 or CELL_MIN for c in cells]
    total = SETUP_MIN + BUILD_MIN * len(trees) + math.ceil(sum(cells_min))
    return math.ceil(total / 10) * 10


def shard_cells(
    cells: list[Cell], shard: Shard, weights: dict[str, float] | None = None
) -> list[Cell]:
    return split(cells, shard.count, weights)[shard.index - 1]
