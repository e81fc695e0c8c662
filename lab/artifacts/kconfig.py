"""Kernel configs: fragments in, a verified .config out.

Pure helpers: parse `.config` and fragment text, assemble what a cell asks for, and
compare it with what `merge_config.sh` + `olddefconfig` produced. A requested option
that did not stick is a ConfigError naming the option and, where the Kconfig says,
why (an unmet `depends on`, or a conflict with another requested value).

A fragment line may be for some guest architectures only: `[aarch64] CONFIG_X=y`, or
`[x86_64, aarch64] ...`; a kernel for another arch does not ask for it. The lab writes
the merged fragment itself, so merge_config.sh never sees the marks.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from pathlib import Path

from lab.core.errors import InfraError, UsageError
from lab.core.registry import UnknownVariant
from lab.model.arches import ARCHES
from lab.model.kernelspec import BASE_FRAGMENT, FRAGMENTS_DIR, option_name

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
_FOR_ARCHES = re.compile(r"^\[([^]]*)\]\s*(.*)$")


class ConfigError(InfraError):
    """The final .config lacks a requested value (exit 3, before anything boots)."""

    def __init__(self, mismatches: list[str]) -> None:
        self.mismatches = mismatches
        super().__init__(
            "kernel config does not have what was asked:\n  " + "\n  ".join(mismatches)
        )


def parse_config(text: str) -> dict[str, str]:
    """`.config` or fragment text -> {CONFIG_X: value}; `# ... is not set` is 'n'."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if m := _SET.match(line):
            values[m.group(1)] = m.group(2)
        elif m := _UNSET.match(line):
            values[m.group(1)] = "n"
    return values


def fragment_values(path: Path, arch: str) -> dict[str, str]:
    """A fragment file's values for a kernel of `arch`: its lines in order, less those
    marked for other arches. A mark naming no known arch is refused (exit 2, file:line)."""
    kept = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        m = _FOR_ARCHES.match(raw.strip())
        if m is None:
            kept.append(raw)
            continue
        names = [name.strip() for name in m.group(1).split(",")]
        try:
            for name in names:
                ARCHES[name]
        except UnknownVariant as e:
            raise UsageError(f"{path}:{number}: {e}") from None
        if arch in names:
            kept.append(m.group(2))
    return parse_config("\n".join(kept))


def fragment_text(values: dict[str, str]) -> str:
    lines = [f"# {k} is not set" if v == "n" else f"{k}={v}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def requested(fragments: Iterable[str], overrides: dict[str, str], arch: str) -> dict[str, str]:
    """What a cell of `arch` asks for: base, the named fragments in order, then each axis
    value with its companion fragment (axis/OPTION=value.config: the options that value
    needs), then the axis values themselves, which win."""
    values: dict[str, str] = {}
    for name in [BASE_FRAGMENT, *fragments]:
        values.update(fragment_values(fragment_path(name), arch))
    axis = {option_name(k): v for k, v in overrides.items()}
    for option, value in axis.items():
        companion = FRAGMENTS_DIR / "axis" / f"{option.removeprefix('CONFIG_')}={value}.config"
        if companion.is_file():
            values.update(fragment_values(companion, arch))
    values.update(axis)
    return values


def fragment_path(name: str) -> Path:
    return FRAGMENTS_DIR / f"{name}.config"


def mismatches(
    wanted: dict[str, str], final: dict[str, str], kconfig: dict[str, str] | None = None
) -> list[str]:
    """Each requested option whose final value differs, with the Kconfig's reason if known."""
    out = []
    for option, value in wanted.items():
        got = final.get(option, "n")
        if got != value:
            reason = (kconfig or {}).get(option, "")
            why = f" ({reason})" if reason else ""
            out.append(f"{option}: asked {value}, got {got}{why}")
    return out


_CONFIG_HEAD = re.compile(r"^\s*(?:menu)?config\s+([A-Z0-9_]+)\s*$")
_DEPENDS = re.compile(r"^\s*depends on\s+(.+)$")


def kconfig_dependencies(tree: Path, options: Iterable[str]) -> dict[str, str]:
    """`depends on` lines of the given options, read from the tree's Kconfig files."""
    wanted = {o.removeprefix("CONFIG_") for o in options}
    found: dict[str, list[str]] = {}
    for kconfig in tree.rglob("Kconfig*"):
        current = None
        for line in kconfig.read_text(errors="replace").splitlines():
            if m := _CONFIG_HEAD.match(line):
                current = m.group(1) if m.group(1) in wanted else None
            elif current and (m := _DEPENDS.match(line)):
                found.setdefault(current, []).append(m.group(1).strip())
    return {f"CONFIG_{k}": "depends on " + " && ".join(v) for k, v in found.items()}


@functools.cache
def known_options(tree: Path) -> frozenset[str]:
    """Every option some Kconfig file of the tree defines (read once per tree and process)."""
    names = set()
    for kconfig in tree.rglob("Kconfig*"):
        for line in kconfig.read_text(errors="replace").splitlines():
            if m := _CONFIG_HEAD.match(line):
                names.add(f"CONFIG_{m.group(1)}")
    return frozenset(names)
