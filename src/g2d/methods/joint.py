"""Joint-Train: the plain multimodal baseline, task loss on the fused logits only."""

from __future__ import annotations

import torch

from g2d.core.losses import task_loss
from g2d.methods.base import METHODS, Method, TeacherOutputs
from g2d.models.multimodal import ModelOutput


@METHODS.register("joint")
class JointTrain(Method):
    """All encoders trained together through the fused prediction (the paper's Joint-Train)."""

    label = "Joint-Train"
    capturable = True

    def loss(
        self, output: ModelOutput, batch: dict[str, torch.Tensor], teachers: TeacherOutputs | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = task_loss(output.logits, batch["label"], self.task)
        return loss, {"task": loss.detach()}
