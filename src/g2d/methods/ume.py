"""UME (Du et al., ICML 2023, "uni-modal ensemble"): average the logits of unimodal models.

Each modality is an independent unimodal model: its encoder and its own linear head,
trained only on that head's loss, ``L = sum_m L_task(head_m(f_m))``. No gradient crosses
between modalities, so this is the same as training k unimodal models side by side (in one
run, with one optimizer). At test time the fused prediction is the mean of the k heads'
logits.

Choices: the heads belong to the method rather than to the fusion module, which UME does
not use, so the method is the same whatever ``model.fusion`` says and no fusion can let one
modality's loss reach another's encoder. The unimodal models are trained here rather than
taken from the teacher artifacts, so UME runs without teachers and its per-modality
numbers come from the same run.

SMP (``smp.enabled``): kappa scales each encoder's gradient, as in joint training.
"""

from __future__ import annotations

import torch
from torch import nn

from g2d.core.losses import task_loss
from g2d.methods.base import METHODS, Method, TeacherOutputs
from g2d.methods.heads import ModalityHeads
from g2d.models.multimodal import ModelOutput


@METHODS.register("ume")
class UME(Method):
    """Independent unimodal models in one run; predictions are the mean of their logits."""

    label = "UME"
    capturable = True
    data_parallel = "its loss uses its own unimodal heads, never the fusion's, whose parameters DDP then waits for in vain"

    def __init__(self, params: object, task: str, modalities: list[str]) -> None:
        super().__init__(params, task, modalities)
        self.heads: ModalityHeads | None = None

    def build_modules(self, feature_dims: dict[str, int], num_outputs: int) -> nn.Module:
        self.heads = ModalityHeads(feature_dims, num_outputs)
        return self.heads

    def loss(
        self, output: ModelOutput, batch: dict[str, torch.Tensor], teachers: TeacherOutputs | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The sum of the unimodal heads' losses; the fusion's output takes no part."""
        assert self.heads is not None
        logits = self.heads(output.features)
        losses = {m: task_loss(logits[m], batch["label"], self.task) for m in self.modalities}
        return sum(losses.values()), {f"loss/{m}": value.detach() for m, value in losses.items()}

    def predict(self, output: ModelOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The mean of the unimodal heads' logits, and each head's own logits."""
        assert self.heads is not None
        per_modality = self.heads(output.features)
        return torch.stack([per_modality[m] for m in self.modalities]).mean(dim=0), per_modality
