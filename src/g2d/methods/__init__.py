"""Training methods, one module each, and the registry that ``method.name`` selects from."""

from __future__ import annotations

from typing import Any

from g2d.errors import G2DError
from g2d.methods.base import Method, TeacherOutputs, parse_params
from g2d.methods.g2d import G2D
from g2d.methods.joint import JointTrain
from g2d.methods.umt import UMT

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (JointTrain, G2D, UMT)}


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``; an unknown name is an error naming ``method.name``."""
    if name not in METHODS:
        raise G2DError(f"config key method.name: unknown method {name!r} (available: {', '.join(METHODS)})")
    return METHODS[name]


def build_method(method_config: dict[str, Any], task: str, modalities: list[str]) -> Method:
    """Instantiate the configured method with its checked hyperparameters."""
    values = dict(method_config)
    cls = method_class(str(values.pop("name", "")))
    return cls(parse_params(cls.Params, values), task, modalities)


__all__ = ["METHODS", "Method", "TeacherOutputs", "build_method", "method_class"]
