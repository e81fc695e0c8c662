"""`vfio-lab doctor` and `vfio-lab schema`: what the lab needs, and what a scenario may say."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Protocol

from lab.cli import doctor
from lab.cli.common import arches_of, load_scenario, scenario_arg
from lab.core.cache import Cache
from lab.core.exitcodes import EXIT_INFRA, EXIT_OK
from lab.model import scenario
from lab.model.arches import ARCHES
from lab.model.kernelspec import KERNEL_SOURCES
from lab.model.schema import describe
from lab.model.suites import SUITES
from lab.model.variants import DEVICES, IOMMU_MODELS


class Documented(Protocol):
    @property
    def doc(self) -> str: ...


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor",
        help="check every prerequisite and say how to fix what is missing (another guest "
        "arch's tools are a warning, unless the scenario has cells of that arch)",
    )
    scenario_arg(p)
    p.set_defaults(func=cmd_doctor)
    sub.add_parser(
        "schema", help="document every scenario field, its default, and the registries"
    ).set_defaults(func=cmd_schema)


def cmd_doctor(args: argparse.Namespace) -> int:
    cells = scenario.expand(load_scenario(args.scenario))
    checks = doctor.all_checks(Cache(), arches_of(cells))
    print(doctor.report(checks))
    return EXIT_OK if doctor.healthy(checks) else EXIT_INFRA


def registries() -> list[tuple[str, list[tuple[str, str]]]]:
    """(title, [(name, doc)]) for each registry a scenario names from: what `schema`
    prints and docs/scenarios.md shows."""
    named: tuple[tuple[str, Mapping[str, Documented]], ...] = (
        ("architectures", ARCHES),
        ("IOMMU models", IOMMU_MODELS),
        ("devices", DEVICES),
        ("kernel sources", KERNEL_SOURCES),
        ("test suites", SUITES),
    )
    return [(title, [(name, v.doc) for name, v in reg.items()]) for title, reg in named]


def cmd_schema(args: argparse.Namespace) -> int:
    print("Scenario fields (key, default, meaning):")
    for key, default, doc in describe(scenario.Scenario):
        print(f"  {key:24} {default:22} {doc}")
    for title, rows in registries():
        print(f"{title}:")
        for name, doc in rows:
            print(f"  {name:24} {doc}")
    print(f"built-in scenarios: {', '.join(scenario.builtin_names())}")
    return EXIT_OK
