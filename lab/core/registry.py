"""Named variants (IOMMU models, devices, kernel sources) listed in one explicit place each."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from lab.core.errors import UsageError

V = TypeVar("V")


class UnknownVariant(UsageError):
    def __init__(self, kind: str, name: str, choices: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.choices = choices
        super().__init__(f"unknown {kind} {name!r}; available: {', '.join(choices)}")


class Registry(Mapping[str, V], Generic[V]):
    """A read-only name -> variant map whose lookup error lists the choices."""

    def __init__(self, kind: str, variants: dict[str, V]) -> None:
        self.kind = kind
        self._variants = dict(variants)

    def __getitem__(self, name: str) -> V:
        try:
            return self._variants[name]
        except KeyError:
            raise UnknownVariant(self.kind, name, sorted(self._variants)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._variants)

    def __len__(self) -> int:
        return len(self._variants)

    def __contains__(self, name: object) -> bool:
        return name in self._variants
