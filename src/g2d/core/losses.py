"""Loss terms and teacher confidence shared by the methods (G²D paper, Eq. 1-5).

Every term upcasts its inputs to float32 before reducing, so under bf16 autocast (the fast
path) the losses are still fp32 reductions; on fp32 inputs ``.float()`` is a no-op.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

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


def shape(tensor: torch.Tensor) -> str:
    """A shape as error messages write it: ``[16, 512]``."""
    return str(list(tensor.shape))


def both(student: torch.Tensor, teacher: torch.Tensor) -> str:
    return f"student features {shape(student)}, teacher features {shape(teacher)}"


def check_tensor(call: str, value: object, what: str) -> torch.Tensor:
    """``value`` itself, refused unless it is a torch tensor (a NumPy array, a list, None...)."""
    if not isinstance(value, torch.Tensor):
        module, name = type(value).__module__, type(value).__qualname__
        kind = "None" if value is None else name if module == "builtins" else f"{module}.{name}"
        hint = " (torch.from_numpy converts an array)" if type(value).__module__ == "numpy" else ""
        raise G2DError(f"{call}: {what} must be a torch.Tensor, got {kind}{hint}")
    return value


def check_targets(call: str, targets: object, logits: torch.Tensor, task: str, read_values: bool = True) -> torch.Tensor:
    """Targets ``[B]`` for logits ``[..., B, C]``: class indices in ``0..C-1`` for classification.

    The indices' range is read back only with ``read_values`` and from CPU tensors: a training step
    makes no host reads (they would stop a GPU every step), so ``G2DLoss`` leaves that check to
    cross-entropy itself.
    """
    targets = check_tensor(call, targets, "targets")
    batch, classes = logits.shape[-2], logits.shape[-1]
    if tuple(targets.shape) != (batch,):
        raise G2DError(f"{call}: targets of shape {shape(targets)} do not match logits of shape {shape(logits)}; "
                       f"expected [{batch}], one target per row")
    if task == "regression":
        return targets
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise G2DError(f"{call}: targets are {targets.dtype}, but classification needs integer class indices "
                       f"(torch.long) in 0..{classes - 1}")
    if read_values and targets.device.type == "cpu":
        low, high = torch.aminmax(targets)
        low, high = low.item(), high.item()
        if low < 0 or high >= classes:
            raise G2DError(f"{call}: targets hold class {low if low < 0 else high}, outside 0..{classes - 1} "
                           f"for logits of shape {shape(logits)}")
    return targets if targets.dtype == torch.long else targets.long()  # what cross_entropy and gather take


def check_task(call: str, task: object) -> str:
    if task not in TASKS:
        raise G2DError(f"{call}: unknown task {task!r} (choose from {', '.join(TASKS)})")
    return task


def sample_confidence(logits: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    """Eq. 5 before its mean: each row's probability of the true class (``[B, C]`` logits -> ``[B]``), or for
    regression ``1 - |sigmoid(prediction) - target|``; a whole dataset's confidence is their sum over all rows / N."""
    logits = logits.float()
    if task == "regression":
        return 1.0 - (torch.sigmoid(logits.squeeze(-1)) - targets.float()).abs()
    return logits.softmax(dim=-1).gather(-1, targets.view(-1, 1)).squeeze(-1)


def confidence(logits: torch.Tensor, targets: torch.Tensor, task: str = "classification") -> torch.Tensor:
    """Eq. 5 for one teacher: the batch mean of its probability of the true class (a 0-d tensor).

    ``logits`` is ``[B, C]``; a stacked ``[k, B, C]`` gives one value per teacher. The mean over a
    whole training set is ``g2d.teacher_confidences``, not a mean of these batch means.
    """
    call = "confidence(logits=...)"
    check_task("confidence(task=...)", task)
    logits = check_tensor(call, logits, "logits")
    if logits.dim() not in (2, 3) or logits.shape[-2] == 0 or logits.shape[-1] == 0:
        raise G2DError(f"{call}: expected [B, C] or [k, B, C] logits with B, C > 0, got shape {shape(logits)}")
    targets = check_targets("confidence(targets=...)", targets, logits, task)
    stacked = logits if logits.dim() == 3 else logits.unsqueeze(0)
    value = teacher_confidence(stacked, targets, task)
    return value if logits.dim() == 3 else value[0]


def check_weight(name: str, value: object, positive: bool = False) -> float:
    """A loss weight or temperature: a finite real number, >= 0 (> 0 where ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        raise G2DError(f"G2DLoss({name}=...): must be a finite number {'>' if positive else '>='} 0, got {value!r}")
    return float(value)


def check_projections(projections: object) -> dict[str, tuple[int, int]]:
    """``{modality: (student_dim, teacher_dim)}`` with positive integer widths."""
    if projections is None:
        return {}
    if not isinstance(projections, Mapping):
        raise G2DError(f"G2DLoss(projections=...): expected {{modality: (student_dim, teacher_dim)}}, got {projections!r}")
    for modality, dims in projections.items():
        if not isinstance(modality, str) or not modality or "." in modality:
            raise G2DError(f"G2DLoss(projections=...): modality {modality!r} must be a non-empty string without '.'")
        if not (isinstance(dims, (tuple, list)) and len(dims) == 2
                and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims)):
            raise G2DError(f"G2DLoss(projections=...): modality {modality!r}: expected (student_dim, teacher_dim), "
                           f"two positive integers, got {dims!r}")
    return {m: (int(dims[0]), int(dims[1])) for m, dims in projections.items()}


def check_modalities(name: str, given: object, modalities: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """A teacher dict keyed exactly by the student's modalities (a stray key would add a term silently)."""
    call = f"G2DLoss({name}=...)"
    if not isinstance(given, Mapping):
        raise G2DError(f"{call}: expected a dict {{modality: tensor}}, got {type(given).__name__}")
    if given.keys() != modalities.keys():
        stray, missing = sorted(set(given) - set(modalities)), sorted(set(modalities) - set(given))
        problem = f"modality {stray[0]!r} is not in features" if stray else f"no entry for modality {missing[0]!r}"
        raise G2DError(f"{call}: {problem} (features has {', '.join(map(repr, modalities))}; "
                       f"{name} has {', '.join(map(repr, given)) or 'none'})")
    return given


class Weight:
    """A ``G2DLoss`` setting checked whenever it is set, so a weight changed between calls is checked too."""

    def __init__(self, positive: bool = False) -> None:
        self.positive = positive

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, loss: object, owner: type | None = None) -> float | Weight:
        return self if loss is None else loss.__dict__[self.name]

    def __set__(self, loss: object, value: object) -> None:
        loss.__dict__[self.name] = check_weight(self.name, value, self.positive)


class G2DLoss(nn.Module):
    """Eq. 4: L = L_task + alpha * sum_m L_feat^m + beta * sum_m L_logit^m (Eq. 1-3), as the CLI computes it.

    ``feature_reduction``: ``mean`` over feature dimensions (the authors' code, default) or ``sum`` (Eq. 2 as written).
    ``projections``: ``{modality: (student_dim, teacher_dim)}`` adds a learnable linear map from the student's
    features to the teacher's width (FitNets' regressor); its parameters are this module's, for your optimizer.
    Every call checks the shapes, keys and targets it is given; a mistake is one ``G2DError`` naming the argument.
    """

    alpha, beta, temperature = Weight(), Weight(), Weight(positive=True)

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, temperature: float = 1.0,
                 task: str = "classification", feature_reduction: str = "mean",
                 projections: Mapping[str, tuple[int, int]] | None = None) -> None:
        super().__init__()
        self.task = check_task("G2DLoss(task=...)", task)
        if feature_reduction not in FEATURE_REDUCTIONS:
            raise G2DError(f"G2DLoss(feature_reduction=...): unknown value {feature_reduction!r} "
                           f"(choose from {', '.join(FEATURE_REDUCTIONS)})")
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.feature_reduction = feature_reduction
        self.projections = nn.ModuleDict({m: nn.Linear(s, t) for m, (s, t) in check_projections(projections).items()})

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        features: dict[str, torch.Tensor],
        teacher_logits: dict[str, torch.Tensor],
        teacher_features: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total loss and its detached terms ``task``, ``feature`` and ``logit`` (each summed over modalities)."""
        targets = self.check(logits, targets, features, teacher_logits, teacher_features)
        if self.projections:
            features = {m: self.projections[m](f) if m in self.projections else f for m, f in features.items()}
        try:
            student = task_loss(logits, targets, self.task)
        except IndexError as exc:  # cross_entropy found a class index out of range (on a CPU; a GPU asserts)
            raise G2DError(f"G2DLoss(targets=...): a target is outside 0..{logits.shape[1] - 1} for logits of shape "
                           f"{shape(logits)} ({exc})") from exc
        feature = sum(feature_distillation(features, teacher_features, self.feature_reduction).values())
        logit = sum(logit_distillation(logits, teacher_logits, self.task, self.temperature).values())
        total = student + self.alpha * feature + self.beta * logit
        return total, {"task": student.detach(), "feature": feature.detach(), "logit": logit.detach()}

    def check(self, logits: object, targets: object, features: object, teacher_logits: object,
              teacher_features: object) -> torch.Tensor:
        """Refuse, per modality, what would broadcast, add a stray term or fail inside torch; returns the targets."""
        logits = check_tensor("G2DLoss(logits=...)", logits, "logits")
        if logits.dim() != 2 or logits.shape[0] == 0 or (self.task == "regression" and logits.shape[1] != 1):
            expected = "[B, 1] (one output per row, regression)" if self.task == "regression" else "[B, C]"
            raise G2DError(f"G2DLoss(logits=...): expected {expected} with B > 0, got shape {shape(logits)}")
        targets = check_targets("G2DLoss(targets=...)", targets, logits, self.task, read_values=False)
        if not isinstance(features, Mapping) or not features:
            given = "an empty dict" if isinstance(features, Mapping) else type(features).__name__
            raise G2DError(f"G2DLoss(features=...): expected a non-empty dict {{modality: student features [B, D]}}, "
                           f"got {given}")
        teacher_features = check_modalities("teacher_features", teacher_features, features)
        teacher_logits = check_modalities("teacher_logits", teacher_logits, features)
        projections = self.projections
        stray = sorted(set(projections) - set(features)) if projections else None
        if stray:
            raise G2DError(f"G2DLoss(projections=...): modality {stray[0]!r} is not in features "
                           f"(features has {', '.join(map(repr, features))})")
        batch = logits.shape[0]
        for m, student in features.items():
            teacher, teacher_logit = teacher_features[m], teacher_logits[m]
            for argument, value in (("features", student), ("teacher_features", teacher), ("teacher_logits", teacher_logit)):
                if not isinstance(value, torch.Tensor):
                    check_tensor(f"G2DLoss({argument}=...)", value, f"modality {m!r}")
            # Messages are built only on a refusal: this runs on every training step.
            if student.dim() != 2 or student.shape[0] != batch:
                raise G2DError(f"G2DLoss(features=...): modality {m!r}: expected [B, D] with B = {batch} (the rows of "
                               f"logits {shape(logits)}), got {both(student, teacher)}; pool feature maps to [B, D] first")
            if teacher.dim() != 2 or teacher.shape[0] != batch:
                raise G2DError(f"G2DLoss(teacher_features=...): modality {m!r}: expected [B, D] with B = {batch}, "
                               f"got {both(student, teacher)}; pool feature maps to [B, D] first")
            width = student.shape[1]
            if projections and m in projections:
                projection = projections[m]
                if width != projection.in_features or teacher.shape[1] != projection.out_features:
                    raise G2DError(f"G2DLoss(projections=...): modality {m!r} maps {projection.in_features} to "
                                   f"{projection.out_features} features, but got {both(student, teacher)}")
                if projection.weight.device != student.device:
                    raise G2DError(f"G2DLoss(projections=...): modality {m!r}: the map is on "
                                   f"{projection.weight.device}, the features on {student.device}; "
                                   "move the loss with loss_fn.to(device)")
                width = projection.out_features
            if width != teacher.shape[1]:
                raise G2DError(f"G2DLoss(teacher_features=...): modality {m!r}: widths differ, {both(student, teacher)}; "
                               f"bridge them with G2DLoss(projections={{{m!r}: ({student.shape[1]}, {teacher.shape[1]})}}) "
                               "and add loss_fn.parameters() to your optimizer")
            if teacher_logit.shape != logits.shape:
                raise G2DError(f"G2DLoss(teacher_logits=...): modality {m!r}: teacher logits {shape(teacher_logit)} "
                               f"do not match the student's logits {shape(logits)}")
        return targets
