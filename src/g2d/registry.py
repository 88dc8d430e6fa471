"""One registry for every kind of named component: methods, datasets, encoders, fusions,
optimizers, loggers and analyses.

A ``Registry`` maps names to records and answers an unknown name with one error that names
the config key and the names available, so no module keeps its own lookup or if-chain over
names (timm's single registry is the model). Every component registers one way, with the
registry's decorator on its definition::

    @ENCODERS.register("mlp", kinds=("vector",))
    def build_mlp(config, spec, prefix): ...

The registry turns the definition and the facts given beside it into its kind's record (an
``EncoderRecord`` here). A class component (a method, a fusion, a logger) is its own record:
its facts are its class attributes, and the decorator gives it its name (``cls.name``), so the
name is written once. A definition made elsewhere (one loader behind several datasets) is
registered by applying the same decorator to it: ``DATASETS.register("cremad", ...)(load)``.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

from g2d.errors import G2DError

R = TypeVar("R")
D = TypeVar("D")


def itself(definition: Any) -> Any:
    """The record of a component whose definition holds its facts (a class and its attributes)."""
    return definition


class Registry(Mapping[str, R], Generic[R]):
    """Names to records of one kind; ``key`` is the config key (or command) that selects one, and
    ``record(definition, **facts)`` builds a record from what ``register`` is given."""

    def __init__(self, kind: str, key: str, record: Callable[..., R] = itself) -> None:
        self.kind = kind
        self.key = key
        self.record = record
        self.entries: dict[str, R] = {}

    def register(self, name: str, **facts: Any) -> Callable[[D], D]:
        """Decorator: register ``definition`` with ``facts`` as ``name``, returning it unchanged. A class
        is given ``name`` as its ``name`` attribute; a second entry under one name is a bug."""

        def add(definition: D) -> D:
            if name in self.entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if isinstance(definition, type):
                declared = vars(definition).get("name", name)
                if declared != name:
                    raise ValueError(f"{self.kind} {name!r}: the class declares the name {declared!r}")
                setattr(definition, "name", name)
            self.entries[name] = self.record(definition, **facts)
            return definition

        return add

    def lookup(self, name: str, key: str | None = None) -> R:
        """The record ``name``; an unknown name is an error naming ``key`` (default: the registry's)."""
        if name not in self.entries:
            raise G2DError(f"config key {key or self.key}: unknown {self.kind} {name!r} "
                           f"(available: {', '.join(self.entries)})")
        return self.entries[name]

    def __getitem__(self, name: str) -> R:
        return self.lookup(name)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)
