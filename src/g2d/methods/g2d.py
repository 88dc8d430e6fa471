"""G²D: task loss + feature distillation + logit distillation from unimodal teachers (Eq. 4).

Sequential Modality Prioritization is not part of the loss; it is the modulator in
``g2d.core.smp``, which this method turns on by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from g2d.core.losses import G2DLoss
from g2d.methods.base import (
    ABOVE_0,
    AT_LEAST_0,
    METHODS,
    Method,
    TeacherOutputs,
    check_feature_reduction,
    check_numbers,
)
from g2d.models.multimodal import ModelOutput


@dataclass
class G2DParams:
    """alpha weighs feature distillation, beta logit distillation; T is the KL temperature (A.4.2).
    ``feature_reduction``: ``mean`` over feature dimensions (the authors' code) or ``sum`` (Eq. 2 as written)."""

    alpha: float = 1.0
    beta: float = 1.0
    temperature: float = 1.0
    feature_reduction: str = "mean"

    def __post_init__(self) -> None:
        check_numbers(self, "g2d", {"alpha": AT_LEAST_0, "beta": AT_LEAST_0, "temperature": ABOVE_0})
        check_feature_reduction(self.feature_reduction, "g2d")


@METHODS.register("g2d")
class G2D(Method):
    """L = L_S + alpha * sum_m L_feat^m + beta * sum_m L_logit^m: the public ``g2d.G2DLoss``."""

    label = "G²D"
    Params = G2DParams
    uses_teachers = True
    smp_by_default = True
    capturable = True

    def __init__(self, params: G2DParams, task: str, modalities: list[str]) -> None:
        super().__init__(params, task, modalities)
        self.loss_fn = G2DLoss(alpha=params.alpha, beta=params.beta, temperature=params.temperature, task=task,
                              feature_reduction=params.feature_reduction)

    def loss(
        self, output: ModelOutput, batch: dict[str, torch.Tensor], teachers: TeacherOutputs | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert teachers is not None, "G2D needs teacher outputs"
        return self.loss_fn(logits=output.logits, targets=batch["label"], features=output.features,
                            teacher_logits=teachers.logits, teacher_features=teachers.features)
