"""A small typed loader from YAML nodes into dataclasses.

Every dataclass field carries its documentation in `metadata["doc"]`; the loader
rejects unknown keys, converts scalars by the field's type, and raises
ScenarioError with the YAML line of the offending node. Cross-field rules are not
checked here: see `scenario.validate`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from lab.core.errors import ScenarioError

T = TypeVar("T")

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DURATION_RE = re.compile(r"^\s*(\d+)(?:\.(\d+))?\s*(ns|us|ms|s)\s*$")
_DURATION_UNITS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9}


def doc_field(
    doc: str, default: Any = dataclasses.MISSING, factory: Callable[[], Any] | None = None
) -> Any:
    """A dataclass field with its documentation; a list or dict default is copied per instance."""
    if isinstance(default, list | dict):
        factory = lambda d=default: type(d)(d)  # noqa: E731
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


def parse_size(text: str | int) -> int:
    """'3G', '512M', '1GiB' or a plain byte count -> bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 512M, 3G)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).upper()]


def parse_duration(text: str) -> int:
    """'10us', '1.5ms', '0ns' -> nanoseconds. The unit is required: a bare number could mean
    anything from nanoseconds to seconds."""
    m = _DURATION_RE.match(text)
    if not m:
        raise ValueError(
            f"not a duration: {text!r} (a number and a unit, ns, us, ms or s: e.g. 10us)"
        )
    whole, fraction, unit = m.group(1), m.group(2) or "", m.group(3)
    scale = _DURATION_UNITS[unit]
    # Exact: integers only, so 1.1us is 1100 ns and not 1100.0000000000002.
    places: int = 10 ** len(fraction)
    ns, rest = divmod(int(whole + fraction) * scale, places)
    if rest:
        raise ValueError(f"{text!r} is not a whole number of nanoseconds")
    return ns


class Size(int):
    """A byte count written in YAML as 3G, 512M or a plain integer."""


class Duration(int):
    """Nanoseconds, written in YAML with a unit: 10us, 1.5ms, 0ns."""


class Axis(list[str]):
    """One value, or a list of them: an axis of the matrix, each value its own cells."""


class KValue(str):
    """A kernel config value. YAML 1.1 reads a bare y/n as true/false; they mean y/n here."""


class Context:
    """Where a node came from: the file, for errors and for resolving relative paths."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.lines: dict[str, int] = {}

    def error(self, node: yaml.Node | None, field: str, message: str) -> ScenarioError:
        line = node.start_mark.line + 1 if node is not None else None
        return ScenarioError(self.file, line, field, message)


def load_yaml_node(file: Path) -> yaml.Node:
    ctx = Context(file)
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise ScenarioError(file, None, "<file>", "no such scenario file") from None
    except OSError as e:
        raise ScenarioError(file, None, "<file>", f"cannot read: {e.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else None
        raise ScenarioError(file, line, "<yaml>", str(e.problem)) from None
    if node is None:
        raise ctx.error(None, "<file>", "the file is empty")
    return node


def load_dataclass(cls: type[T], node: yaml.Node, ctx: Context, path: str = "") -> T:
    """Build `cls` from a mapping node, rejecting unknown keys."""
    if not isinstance(node, yaml.MappingNode):
        raise ctx.error(node, path or "<top>", f"expected a mapping, got {_kind(node)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = key_node.value
        where = f"{path}.{key}" if path else str(key)
        if key not in fields or not fields[key].init:
            known = ", ".join(sorted(n for n, f in fields.items() if f.init))
            raise ctx.error(key_node, where, f"unknown key; known keys: {known}")
        if key in values:
            raise ctx.error(key_node, where, "key given twice")
        ctx.lines[where] = key_node.start_mark.line + 1
        values[key] = convert(hints[key], value_node, ctx, where)
    for name, f in fields.items():
        if f.init and name not in values and _required(f):
            raise ctx.error(node, f"{path}.{name}" if path else name, "required key is missing")
    return cls(**values)


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"{node.value!r}"


def convert(tp: Any, node: yaml.Node, ctx: Context, where: str) -> Any:
    """Convert one node to the type `tp` (scalars, Size, Path, list, dict, dataclass, Optional)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Axis:
        if isinstance(node, yaml.ScalarNode):
            return Axis([_convert_scalar(str, node, ctx, where)])
        values = Axis(convert(list[str], node, ctx, where))
        if not values:
            raise ctx.error(node, where, "expected at least one value")
        return values
    if origin in (typing.Union, types.UnionType):
        if _is_null(node) and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return convert(inner, node, ctx, where)
    if origin is list:
        if not isinstance(node, yaml.SequenceNode):
            raise ctx.error(node, where, f"expected a list, got {_kind(node)}")
        items = []
        for i, item in enumerate(node.value):
            ctx.lines[f"{where}[{i}]"] = item.start_mark.line + 1
            items.append(convert(args[0], item, ctx, f"{where}[{i}]"))
        return items
    if origin is dict:
        if not isinstance(node, yaml.MappingNode):
            raise ctx.error(node, where, f"expected a mapping, got {_kind(node)}")
        out: dict[Any, Any] = {}
        for k, v in node.value:
            key = convert(args[0], k, ctx, where)
            if key in out:
                raise ctx.error(k, f"{where}.{k.value}", "key given twice")
            ctx.lines[f"{where}.{k.value}"] = k.start_mark.line + 1
            out[key] = convert(args[1], v, ctx, f"{where}.{k.value}")
        return out
    if dataclasses.is_dataclass(tp):
        shorthand = getattr(tp, "SHORTHAND", None)
        if shorthand and isinstance(node, yaml.ScalarNode):
            # `- debian:7.2` stands for `- {source: debian:7.2}`
            return tp(**{shorthand: _convert_scalar(str, node, ctx, where)})  # type: ignore[operator]
        return load_dataclass(tp, node, ctx, where)  # type: ignore[arg-type]
    return _convert_scalar(tp, node, ctx, where)


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _convert_scalar(tp: Any, node: yaml.Node, ctx: Context, where: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise ctx.error(node, where, f"expected {_type_name(tp)}, got {_kind(node)}")
    value = yaml.constructor.SafeConstructor().construct_object(node)
    try:
        return _coerce(tp, value, ctx)
    except (TypeError, ValueError) as e:
        raise ctx.error(node, where, str(e)) from None


def _coerce(tp: Any, value: Any, ctx: Context) -> Any:
    if tp is Size:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise TypeError(f"expected a size such as 2G, got {value!r}")
        return Size(parse_size(value))
    if tp is Duration:
        if not isinstance(value, str):
            raise TypeError(f"expected a duration with a unit such as 10us, got {value!r}")
        return Duration(parse_duration(value))
    if tp is KValue:
        if isinstance(value, bool):
            return KValue("y" if value else "n")
        if isinstance(value, int | str):
            return KValue(str(value))
        raise TypeError(f"expected a config value such as y, n, m or a string, got {value!r}")
    if tp is Path:
        if not isinstance(value, str):
            raise TypeError(f"expected a path, got {value!r}")
        return (ctx.file.parent / value).resolve()
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if typing.get_origin(tp) is typing.Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(map(str, typing.get_args(tp)))
            raise ValueError(f"{value!r} is not one of: {choices}")
        return value
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise TypeError(f"expected {_type_name(tp)}, got {value!r}")
    return value


def _type_name(tp: Any) -> str:
    return {int: "an integer", str: "a string", bool: "true or false", float: "a number"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def describe(cls: type[Any], prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) rows for `cls` and its nested dataclasses, for `vfio-lab schema`."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{prefix}{f.name}"
        rows.append((key, _default_text(f), f.metadata.get("doc", "")))
        inner = _nested_dataclass(hints[f.name])
        if inner is not None:
            rows.extend(
                describe(
                    inner, f"{key}." if dataclasses.is_dataclass(hints[f.name]) else f"{key}[]."
                )
            )
    return rows


def _nested_dataclass(tp: Any) -> type[Any] | None:
    if dataclasses.is_dataclass(tp):
        return tp  # type: ignore[return-value]
    args = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
    return args[0] if args else None  # type: ignore[return-value]


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return "(see below)" if dataclasses.is_dataclass(value) else repr(value)
    return "required"
