"""OGM-GE (Peng et al., CVPR 2022): on-the-fly gradient modulation with generalization enhancement.

Each step, every modality's score is its per-modality head's mean softmax probability of the
true class (the paper and code sum over the batch; the ratio is the same). A modality m
whose score exceeds the weakest modality's by the ratio rho_m = s_m / s_min > 1 gets its
encoder gradients multiplied by ``1 - tanh(alpha * rho_m)`` (Eq. 10; the official code has
``relu(rho)`` inside tanh, which is rho since rho > 1); the weakest keeps coefficient 1.
GE then adds Gaussian noise with the standard deviation of each (unmodulated) gradient
tensor to every encoder gradient, weak modality included, as the official code does.
Modulation runs for ``modulation_starts <= epoch <= modulation_ends`` (inclusive, as the
code tests it; default 0..50).

Differences from the official code, each deliberate:
- k modalities: each is compared with the weakest (for k = 2 this is the paper's ratio).
- Scores come from ``output.modality_logits``, which every fusion provides, instead of
  slicing a concat head's weight matrix.
- ``parameters: all`` (default) modulates every encoder parameter; ``conv`` touches 4-D
  convolution weights only, as the official code does. The default differs because with an
  MLP encoder ``conv`` would modulate nothing.
- Regression: the score is ``1 - mean |sigmoid(prediction) - target|``, the same confidence
  that SMP uses for regression teachers.
With ``smp.enabled=true``, SMP's kappa multiplies the gradients after OGM-GE's modulation
(noise included), as for every method, so a suppressed encoder gets no update at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from g2d.config import Choice
from g2d.core.balancing import in_window
from g2d.core.losses import teacher_confidence
from g2d.core.smp import partial_coefficients
from g2d.methods.base import AT_LEAST_0, METHODS, MethodContext, check_numbers
from g2d.methods.joint import JointTrain
from g2d.models.multimodal import ModelOutput


class Parameters(Choice):
    all = "all"
    conv = "conv"


@dataclass
class OGMGEParams:
    """alpha: modulation strength (0.8 for CREMA-D in the paper's code, 0.1 for VGGSound);
    ge: add the Gaussian noise; parameters: ``all`` encoder parameters or ``conv`` weights only."""

    alpha: float = 0.8
    modulation_starts: int = 0
    modulation_ends: Optional[int] = 50
    ge: bool = True
    parameters: Parameters = Parameters.all

    def __post_init__(self) -> None:
        check_numbers(self, "ogm_ge", {"alpha": AT_LEAST_0, "modulation_starts": AT_LEAST_0,
            "modulation_ends": AT_LEAST_0})


def ogm_coefficients(modality_logits: torch.Tensor, labels: torch.Tensor, alpha: float, task: str) -> torch.Tensor:
    """``[k]`` coefficients from stacked per-modality logits ``[k, B, C]``: 1 - tanh(alpha * s_m / s_min) above the weakest."""
    scores = teacher_confidence(modality_logits.detach(), labels, task)  # mean true-class probability per modality
    return partial_coefficients(scores, alpha)


def modulate_gradients(parameters: list[list[nn.Parameter]], coefficients: torch.Tensor, noise: bool) -> None:
    """g <- coefficient * g (+ N(0, std(g)^2) with GE), per modality, all on the device.

    The noise's standard deviation is that of the gradient before scaling, plus 1e-8, as in
    the official code; a one-element gradient has no spread and gets no noise.
    """
    for index, params in enumerate(parameters):
        for param in params:
            grad = param.grad
            if grad is None:
                continue
            std = grad.std() + 1e-8 if noise and grad.numel() > 1 else None
            grad.mul_(coefficients[index])
            if std is not None:
                grad.add_(torch.randn_like(grad) * std)


@METHODS.register("ogm_ge")
class OGMGE(JointTrain):
    """Joint training whose dominant encoders' gradients are damped by OGM's coefficient, plus GE noise."""

    label = "OGM-GE"
    data_parallel = "its coefficients come from each process's own batch and its gradient noise is drawn per process"
    Params = OGMGEParams
    capturable = True

    def __init__(self, params: OGMGEParams, task: str, modalities: list[str]) -> None:
        super().__init__(params, task, modalities)
        self.targets: list[list[nn.Parameter]] = []
        self.modulating = in_window(0, params.modulation_starts, params.modulation_ends)

    def setup(self, context: MethodContext) -> None:
        super().setup(context)
        conv_only = self.params.parameters == "conv"
        self.targets = [[p for p in context.model.encoder_parameters(m) if not conv_only or p.dim() == 4]
                        for m in self.modalities]

    def on_epoch_start(self, epoch: int) -> None:
        self.modulating = in_window(epoch, self.params.modulation_starts, self.params.modulation_ends)

    def modulate_gradients(self, output: ModelOutput, batch: dict[str, torch.Tensor],
                           terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inside the window, OGM's coefficients and GE noise on the targeted encoder gradients; ones outside."""
        if not self.modulating:
            return torch.ones(len(self.modalities), device=output.logits.device)
        stacked = torch.stack([output.modality_logits[m] for m in self.modalities])
        coefficients = ogm_coefficients(stacked, batch["label"], self.params.alpha, self.task)
        modulate_gradients(self.targets, coefficients, self.params.ge)
        return coefficients
