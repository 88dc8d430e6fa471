"""G²D: task loss + feature distillation + logit distillation from unimodal teachers (Eq. 4).

Sequential Modality Prioritization is not part of the loss; it is the modulator in
``g2d.core.smp``, which this method turns on by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from g2d.core.losses import feature_distillation, logit_distillation, task_loss
from g2d.methods.base import Method, TeacherOutputs, check_feature_reduction
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
        check_feature_reduction(self.feature_reduction, "g2d")


class G2D(Method):
    """L = L_S + alpha * sum_m L_feat^m + beta * sum_m L_logit^m."""

    name = "g2d"
    Params = G2DParams
    uses_teachers = True
    smp_by_default = True
    capturable = True

    def loss(
        self, output: ModelOutput, batch: dict[str, torch.Tensor], teachers: TeacherOutputs | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert teachers is not None, "G2D needs teacher outputs"
        student = task_loss(output.logits, batch["label"], self.task)
        feature = sum(feature_distillation(output.features, teachers.features, self.params.feature_reduction).values())
        logit = sum(logit_distillation(output.logits, teachers.logits, self.task, self.params.temperature).values())
        loss = student + self.params.alpha * feature + self.params.beta * logit
        return loss, {"task": student.detach(), "feature": feature.detach(), "logit": logit.detach()}
