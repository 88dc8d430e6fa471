"""Training methods, one module each, and the registry that ``method.name`` selects from."""

from __future__ import annotations

from typing import Any

from g2d.errors import G2DError
from g2d.methods.agm import AGM
from g2d.methods.base import Method, TeacherOutputs, parse_params
from g2d.methods.dlmg import DLMG
from g2d.methods.g2d import G2D
from g2d.methods.joint import JointTrain
from g2d.methods.mla import MLA
from g2d.methods.mmpareto import MMPareto
from g2d.methods.mses import MSES
from g2d.methods.mslr import MSLR
from g2d.methods.ogm_ge import OGMGE
from g2d.methods.pmr import PMR
from g2d.methods.reconboost import ReconBoost
from g2d.methods.ume import UME
from g2d.methods.umt import UMT
from g2d.registry import Registry

METHODS: Registry[type[Method]] = Registry("method", "method.name")
for _cls in (JointTrain, G2D, UMT, UME, OGMGE, AGM, PMR, MLA, MMPareto, ReconBoost, DLMG, MSES, MSLR):
    METHODS.register(_cls.name)(_cls)


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``; an unknown name is an error naming ``method.name``."""
    return METHODS[name]


def check_method_config(method_config: dict[str, Any]) -> tuple[type[Method], Any]:
    """``method.name``'s class and its parsed ``method.<name>`` hyperparameters; an unknown method,
    a stray key or a bad hyperparameter is an error naming the config key (no dataset needed)."""
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


def build_method(method_config: dict[str, Any], task: str, modalities: list[str]) -> Method:
    """Instantiate ``method.name`` with its hyperparameters from ``method.<name>``.

    Hyperparameters are namespaced by method, so one config can hold several methods'
    settings and scripts can switch ``method.name`` alone; the selected block is checked
    strictly, and a key that is neither ``name`` nor a method's name is an error.
    """
    cls, params = check_method_config(method_config)
    if task not in cls.tasks:
        raise G2DError(f"config key method.name: {cls.name} supports {' and '.join(cls.tasks)} only, not {task} "
                       f"(see its docstring for why)")
    return cls(params, task, modalities)


__all__ = ["METHODS", "Method", "TeacherOutputs", "build_method", "check_method_config", "method_class"]
