"""Gradient helpers for methods that own their step (MMPareto, DLMG)."""

from __future__ import annotations

import torch
from torch import nn


def gradients(loss: torch.Tensor, params: list[nn.Parameter], retain_graph: bool) -> list[torch.Tensor]:
    """d loss / d params, with zeros for parameters the loss does not reach."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """The inner product of two gradients given as lists of tensors (a device scalar)."""
    return sum(((x * y).sum() for x, y in zip(a, b)), torch.zeros((), device=a[0].device))
