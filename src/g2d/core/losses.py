"""Loss terms and teacher confidence shared by the methods (G²D paper, Eq. 1-5).

Every term upcasts its inputs to float32 before reducing, so under bf16 autocast (the fast
path) the losses are still fp32 reductions; on fp32 inputs ``.float()`` is a no-op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
