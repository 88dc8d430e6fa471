"""UMT (Du et al. 2023): task loss plus feature distillation from unimodal teachers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from g2d.core.losses import feature_distillation, task_loss
from g2d.methods.base import AT_LEAST_0, METHODS, Method, TeacherOutputs, check_feature_reduction, check_numbers
from g2d.models.multimodal import ModelOutput


@dataclass
class UMTParams:
    """Weight of the feature-distillation term (10 in a public implementation of UMT) and its
    ``feature_reduction`` over feature dimensions (``mean``, that implementation's, or ``sum``)."""

    feature_weight: float = 10.0
    feature_reduction: str = "mean"

    def __post_init__(self) -> None:
        check_numbers(self, "umt", {"feature_weight": AT_LEAST_0})
        check_feature_reduction(self.feature_reduction, "umt")


@METHODS.register("umt")
class UMT(Method):
    """L = L_S + feature_weight * sum_m MSE(student feature_m, teacher feature_m)."""

    label = "UMT"
    Params = UMTParams
    uses_teachers = True
    capturable = True

    def loss(
        self, output: ModelOutput, batch: dict[str, torch.Tensor], teachers: TeacherOutputs | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert teachers is not None, "UMT needs teacher outputs"
        student = task_loss(output.logits, batch["label"], self.task)
        feature = sum(feature_distillation(output.features, teachers.features, self.params.feature_reduction).values())
        loss = student + self.params.feature_weight * feature
        return loss, {"task": student.detach(), "feature": feature.detach()}
