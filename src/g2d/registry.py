"""One registry for every kind of named component: methods, fusions, encoders, datasets,
optimizers and ``g2d prepare`` commands.

A ``Registry`` maps names to entries (a class or a builder function) and answers an unknown
name with one error that names the config key and the names available, so no module keeps
its own lookup or if-chain over names (timm's single registry is the model).
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, Mapping, TypeVar

from g2d.errors import G2DError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Names to entries of one kind; ``key`` is the config key (or command) that selects one."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        self.entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding an entry under ``name``; a second entry under one name is a bug."""

        def add(entry: T) -> T:
            if name in self.entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self.entries[name] = entry
            return entry

        return add

    def lookup(self, name: str, key: str | None = None) -> T:
        """The entry ``name``; an unknown name is an error naming ``key`` (default: the registry's)."""
        if name not in self.entries:
            raise G2DError(f"config key {key or self.key}: unknown {self.kind} {name!r} "
                           f"(available: {', '.join(self.entries)})")
        return self.entries[name]

    def __getitem__(self, name: str) -> T:
        return self.lookup(name)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)
