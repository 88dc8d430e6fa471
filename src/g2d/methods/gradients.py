"""Gradient helpers for methods that own their step (MLA, MMPareto, UME, DLMG)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def gradients(loss: torch.Tensor, params: list[nn.Parameter], retain_graph: bool) -> list[torch.Tensor]:
    """d loss / d params, with zeros for parameters the loss does not reach."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """The inner product of two gradients given as lists of tensors (a device scalar)."""
    return sum(((x * y).sum() for x, y in zip(a, b)), torch.zeros((), device=a[0].device))


def smp_kappa(ctx: Any, epoch: int, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """SMP's kappa when a modulator acts in this epoch (teachers run only then), else None."""
    if ctx.modulator is None or not ctx.modulator.active(epoch):
        return None
    return ctx.smp_coefficients(epoch, inputs, ctx.teacher_outputs(inputs))


def reported_kappa(ctx: Any, kappa: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """What a step reports: kappa, or ones outside the window when SMP is on (as the default step does)."""
    if kappa is None and ctx.modulator is not None:
        return torch.ones(len(ctx.modalities), device=device)
    return kappa
