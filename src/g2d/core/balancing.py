"""Pieces the balancing baselines share: modulation windows, encoder gradient scaling, and
per-modality learning-rate factors applied to the optimizer's named param groups for one step.

Everything a step does here stays on the device: coefficients are tensors multiplied into
gradients, and learning-rate factors are host numbers decided once per epoch.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn


def in_window(epoch: int, starts: int, ends: Optional[int]) -> bool:
    """``starts <= epoch <= ends`` (both inclusive, as the official codes test it); ``ends=None`` is open."""
    return starts <= epoch and (ends is None or epoch <= ends)


def scale_gradients(parameters: list[list[nn.Parameter]], coefficients: torch.Tensor) -> None:
    """Multiply the gradients of the i-th parameter list by ``coefficients[i]`` (a device tensor)."""
    for index, params in enumerate(parameters):
        for param in params:
            if param.grad is not None:
                param.grad.mul_(coefficients[index])


@contextmanager
def scaled_learning_rates(optimizer: torch.optim.Optimizer, factors: dict[str, float]) -> Iterator[None]:
    """Within the block, the param group named ``name`` steps with ``lr * factors[name]``.

    The groups' own rates are restored afterwards, so the learning-rate scheduler and the
    checkpointed optimizer state never see the factors. A factor of 0 leaves that group's
    parameters unchanged by SGD, Adam and AdamW alike (their updates and decoupled weight
    decay are all multiplied by the rate).
    """
    saved = []
    for group in optimizer.param_groups:
        factor = factors.get(group.get("name", ""), 1.0)
        if factor != 1.0:
            saved.append((group, group["lr"]))
            group["lr"] = group["lr"] * factor
    try:
        yield
    finally:
        for group, lr in saved:
            group["lr"] = lr
