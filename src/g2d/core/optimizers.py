"""The optimizers ``optim.name`` selects: a registry with no training loop behind it, so the
preflight check (``g2d.runs.check``) and the loop (``g2d.training.engine``) read the same names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from g2d.config import OptimConfig
from g2d.registry import Registry


@dataclass(frozen=True)
class OptimizerRecord:
    """An optimizer's facts: ``build(param_groups, optim config, **implementation options)`` makes it;
    ``capturable``: whether it takes torch's ``capturable`` option, which the fast path sets for CUDA
    graphs (SGD keeps no step counter, so it needs no capturable mode and has none)."""

    build: Callable[..., torch.optim.Optimizer]
    capturable: bool = True

    def __call__(self, groups: list[dict], config: OptimConfig, **options: Any) -> torch.optim.Optimizer:
        """The optimizer over ``groups``; ``options`` (``foreach``, ``fused``, ``capturable``) select its implementation."""
        if not self.capturable:
            options.pop("capturable", None)
        return self.build(groups, config, **options)


# ``@OPTIMIZERS.register("name")`` on the builder: ``optim.name=name`` selects it.
OPTIMIZERS: Registry[OptimizerRecord] = Registry("optimizer", "optim.name", OptimizerRecord)


@OPTIMIZERS.register("sgd", capturable=False)
def sgd(groups: list[dict], config: OptimConfig, **options: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, **options)


@OPTIMIZERS.register("adam")
def adam(groups: list[dict], config: OptimConfig, **options: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay, **options)


@OPTIMIZERS.register("adamw")
def adamw(groups: list[dict], config: OptimConfig, **options: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, **options)
