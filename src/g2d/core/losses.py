"""Loss terms and teacher confidence shared by the methods (G²D paper, Eq. 1-5).

Every term upcasts its inputs to float32 before reducing, so under bf16 autocast (the fast
path) the losses are still fp32 reductions; on fp32 inputs ``.float()`` is a no-op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from g2d.errors import G2DError

TASKS = ("classification", "regression")


def task_loss(logits: torch.Tensor, labels: torch.Tensor, task: str) -> torch.Tensor:
    """Eq. 1: cross-entropy for classification, MSE of a sigmoid output for regression.

    Regression targets are expected already scaled to [0, 1] by the dataset.
    """
    logits = logits.float()
    if task == "classification":
        return F.cross_entropy(logits, labels)
    return F.mse_loss(torch.sigmoid(logits.squeeze(-1)), labels.float())


FEATURE_REDUCTIONS = ("mean", "sum")


def feature_distillation(
    student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], reduction: str = "mean"
) -> dict[str, torch.Tensor]:
    """Eq. 2 per modality: squared error between student and teacher encoder features.

    ``mean`` averages over batch and feature dimensions, as the authors' code does; ``sum`` is Eq. 2
    as written, the squared L2 norm summed over feature dimensions, then averaged over the batch
    (``mean`` times the feature dimension D).
    """
    if reduction not in FEATURE_REDUCTIONS:
        raise ValueError(f"feature reduction {reduction!r} is not one of {', '.join(FEATURE_REDUCTIONS)}")
    if reduction == "mean":
        return {m: F.mse_loss(student[m].float(), teacher[m].float()) for m in teacher}
    return {m: (student[m].float() - teacher[m].float()).pow(2).flatten(1).sum(dim=1).mean() for m in teacher}


def logit_distillation(
    student_logits: torch.Tensor,
    teacher_logits: dict[str, torch.Tensor],
    task: str,
    temperature: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Eq. 3 per modality: KL(softmax(teacher_m / T) || softmax(student / T)) * T^2, batch mean.

    For regression there is no class distribution, so the term is the MSE between the
    student's and the teacher's sigmoid predictions.
    """
    student_logits = student_logits.float()
    if task == "regression":
        prediction = torch.sigmoid(student_logits.squeeze(-1))
        return {m: F.mse_loss(prediction, torch.sigmoid(t.float().squeeze(-1))) for m, t in teacher_logits.items()}
    student_log_p = F.log_softmax(student_logits / temperature, dim=-1)
    return {
        m: F.kl_div(student_log_p, F.log_softmax(t.float() / temperature, dim=-1), reduction="batchmean", log_target=True)
        * temperature**2
        for m, t in teacher_logits.items()
    }


def teacher_confidence(teacher_logits: torch.Tensor, labels: torch.Tensor, task: str) -> torch.Tensor:
    """Eq. 5: per modality, the batch mean of the teacher's probability of the true class.

    ``teacher_logits`` is stacked ``[k, B, C]``; returns ``[k]``. For regression the
    confidence is ``1 - mean |sigmoid(prediction) - target|`` on the [0, 1] target scale:
    like the true-class probability it lies in [0, 1] and grows as the teacher is right.
    """
    teacher_logits = teacher_logits.float()
    if task == "regression":
        error = (torch.sigmoid(teacher_logits.squeeze(-1)) - labels.float().unsqueeze(0)).abs()
        return 1.0 - error.mean(dim=1)
    probabilities = teacher_logits.softmax(dim=-1)
    index = labels.view(1, -1, 1).expand(probabilities.shape[0], -1, 1)
    return probabilities.gather(-1, index).squeeze(-1).mean(dim=1)


def confidence(logits: torch.Tensor, targets: torch.Tensor, task: str = "classification") -> torch.Tensor:
    """Eq. 5 for one teacher: the batch mean of its probability of the true class (a 0-d tensor).

    ``logits`` is ``[B, C]``; a stacked ``[k, B, C]`` gives one value per teacher.
    """
    if logits.dim() not in (2, 3):
        raise G2DError(f"confidence(logits=...): expected [B, C] or [k, B, C] logits, got shape {tuple(logits.shape)}")
    stacked = logits if logits.dim() == 3 else logits.unsqueeze(0)
    value = teacher_confidence(stacked, targets, task)
    return value if logits.dim() == 3 else value[0]


class G2DLoss(nn.Module):
    """Eq. 4: L = L_task + alpha * sum_m L_feat^m + beta * sum_m L_logit^m (Eq. 1-3), as the CLI computes it.

    ``feature_reduction``: ``mean`` over feature dimensions (the authors' code, default) or ``sum`` (Eq. 2 as written).
    """

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, temperature: float = 1.0,
                 task: str = "classification", feature_reduction: str = "mean") -> None:
        super().__init__()
        if task not in TASKS:
            raise G2DError(f"G2DLoss(task=...): unknown task {task!r} (choose from {', '.join(TASKS)})")
        if temperature <= 0:
            raise G2DError(f"G2DLoss(temperature=...): must be > 0, got {temperature!r}")
        if feature_reduction not in FEATURE_REDUCTIONS:
            raise G2DError(f"G2DLoss(feature_reduction=...): unknown value {feature_reduction!r} "
                           f"(choose from {', '.join(FEATURE_REDUCTIONS)})")
        self.alpha, self.beta, self.temperature, self.task = alpha, beta, temperature, task
        self.feature_reduction = feature_reduction

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        features: dict[str, torch.Tensor],
        teacher_logits: dict[str, torch.Tensor],
        teacher_features: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total loss and its detached terms ``task``, ``feature`` and ``logit`` (each summed over modalities)."""
        missing = sorted(set(teacher_features) - set(features))
        if missing:
            raise G2DError(f"G2DLoss(features=...): no student features for teacher modality {missing[0]!r} "
                           f"(features has {', '.join(sorted(features)) or 'none'})")
        student = task_loss(logits, targets, self.task)
        feature = sum(feature_distillation(features, teacher_features, self.feature_reduction).values())
        logit = sum(logit_distillation(logits, teacher_logits, self.task, self.temperature).values())
        total = student + self.alpha * feature + self.beta * logit
        return total, {"task": student.detach(), "feature": feature.detach(), "logit": logit.detach()}
