"""Training methods, one module each, and the registry that ``method.name`` selects from.

Every module of this package is imported here, so a method registers itself where it is
defined (``@METHODS.register("name")`` in its own file) and needs no line elsewhere.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from g2d.errors import G2DError
from g2d.methods.base import (
    METHODS,
    Method,
    TeacherOutputs,
    parse_params,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``; an unknown name is an error naming ``method.name``."""
    return METHODS[name]


def method_params(method_config: dict[str, Any]) -> tuple[type[Method], Any]:
    """The class ``method.name`` selects and its hyperparameters from ``method.<name>``, checked.

    Hyperparameters are namespaced by method, so one config can hold several methods'
    settings and scripts can switch ``method.name`` alone; the selected block is checked
    strictly, and a key that is neither ``name`` nor a method's name is an error.
    """
    values = dict(method_config)
    name = str(values.pop("name", ""))
    cls = method_class(name)
    for key in values:
        if key not in METHODS:
            raise G2DError(
                f"config key method.{key}: not a method name; hyperparameters go under method.<name>, "
                f"e.g. method.{name}.{key}"
            )
    return cls, parse_params(cls.Params, dict(values.get(name) or {}), prefix=f"method.{name}")


def check_task(cls: type[Method], task: str) -> None:
    """A method trains only the tasks its record lists."""
    if task not in cls.tasks:
        raise G2DError(f"config key method.name: {cls.name} supports {' and '.join(cls.tasks)} only, not {task} "
                       f"(see its docstring for why)")


def build_method(method_config: dict[str, Any], task: str, modalities: list[str]) -> Method:
    """Instantiate ``method.name`` with its hyperparameters from ``method.<name>`` for ``task``."""
    cls, params = method_params(method_config)
    check_task(cls, task)
    return cls(params, task, modalities)


__all__ = ["METHODS", "Method", "TeacherOutputs", "build_method", "check_task", "method_class", "method_params"]
