"""Teachers from the user's own modules: ``train_teacher`` (the paper's teacher recipe) and
``teacher_confidences`` (Eq. 5 over every row of a loader, what ``SMP.rank`` takes).

A teacher is any module of one modality whose output is ``(features [B, D], logits [B, C])``, or any
module plus an ``outputs`` function mapping its output to that pair (``g2d.Teacher``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Callable

import torch

from g2d.config import OptimConfig
from g2d.core.losses import check_targets, check_task, sample_confidence, task_loss
from g2d.errors import G2DError
from g2d.training.teachers import FORMAT, Teacher, check_pair, save_teacher

Outputs = Callable[[Any], tuple[torch.Tensor, torch.Tensor]]


def move(value: Any, device: torch.device) -> Any:
    """A batch's tensors on ``device``, inside tuples, lists and dicts too."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (tuple, list)):
        return type(value)(move(v, device) for v in value)
    if isinstance(value, Mapping):
        return {key: move(v, device) for key, v in value.items()}
    return value


def device_of(module: torch.nn.Module) -> torch.device:
    """Where a module's weights are (the CPU for a module without any)."""
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def check_function(call: str, value: object, what: str) -> None:
    if not callable(value):
        raise G2DError(f"{call}: expected a function of a batch that returns {what}, got {type(value).__name__}")


def check_loader(call: str, loader: object) -> None:
    if not isinstance(loader, Iterable) or isinstance(loader, (str, bytes, Mapping, torch.Tensor)):
        raise G2DError(f"{call}: expected an iterable of batches (a torch DataLoader), got {type(loader).__name__}")


def check_out(out: object) -> Path:
    """A folder that will hold the teacher; one that already holds a teacher is never replaced."""
    if not isinstance(out, (str, os.PathLike)):
        raise G2DError(f"train_teacher(out=...): expected a folder path, got {type(out).__name__}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise G2DError(f"train_teacher(out=...): {out} is a file, not a folder")
    if (out / "teacher.json").exists():
        raise G2DError(f"train_teacher(out=...): {out} already holds a teacher; reload it with "
                       "g2d.load_teacher(out, module=...) or choose another folder")
    return out


def default_optimizer(module: torch.nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.StepLR]:
    """The paper's optimizer and decay (A.4.2), as the CLI's defaults: SGD lr 1e-3, momentum 0.9, weight decay 1e-4,
    x0.1 every 200 epochs."""
    settings = OptimConfig()
    optimizer = torch.optim.SGD(module.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, settings.lr_step, settings.lr_gamma)


def check_optimizer(optimizer: object, module: torch.nn.Module) -> torch.optim.Optimizer:
    """The user's optimizer, refused if it would not update ``module`` (built over another model's parameters)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise G2DError(f"train_teacher(optimizer=...): expected a torch.optim.Optimizer over the module's parameters, "
                       f"got {type(optimizer).__name__}")
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not any(id(p) in held for p in module.parameters()):
        raise G2DError("train_teacher(optimizer=...): it holds none of the module's parameters; "
                       "build it over module.parameters()")
    return optimizer


def train_teacher(
    module: torch.nn.Module,
    loader: Iterable,
    *,
    inputs: Callable[[Any], Any],
    targets: Callable[[Any], torch.Tensor],
    epochs: int,
    outputs: Outputs | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    task: str = "classification",
    device: str | torch.device | None = None,
    out: str | Path | None = None,
) -> Teacher:
    """Train one modality's teacher with the paper's recipe, the task loss alone (Eq. 1), and return it frozen.

    ``inputs(batch)`` is the module's input and ``targets(batch)`` the targets, for each batch of ``loader``;
    ``outputs`` maps the module's output to ``(features, logits)``. ``optimizer`` defaults to the paper's SGD.
    The teacher is the module after the last epoch (there is no validation split here). ``device`` moves the
    module there (default: where it is). ``out`` also saves it as a teacher folder that
    ``g2d.load_teacher(out, module=<a new instance>, outputs=...)`` reloads.
    """
    call = "train_teacher"
    if not isinstance(module, torch.nn.Module):
        raise G2DError(f"{call}(module=...): expected a torch.nn.Module, got {type(module).__name__}")
    check_loader(f"{call}(loader=...)", loader)
    check_function(f"{call}(inputs=...)", inputs, "the module's input")
    check_function(f"{call}(targets=...)", targets, "the targets")
    if outputs is not None:
        check_function(f"{call}(outputs=...)", outputs, "(features, logits) from the module's output")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise G2DError(f"{call}(epochs=...): expected a positive integer, got {epochs!r}")
    check_task(f"{call}(task=...)", task)
    folder = check_out(out) if out is not None else None
    try:
        device = torch.device(device) if device is not None else device_of(module)
    except (RuntimeError, TypeError) as exc:
        raise G2DError(f"{call}(device=...): not a device: {device!r}") from exc
    module.to(device)
    if optimizer is None:
        optimizer, schedule = default_optimizer(module)
    else:
        optimizer, schedule = check_optimizer(optimizer, module), None
    losses = []
    module.train()
    for _ in range(epochs):
        total, rows = 0.0, 0
        for batch in loader:
            output = module(move(inputs(batch), device))
            features, logits = check_pair(output if outputs is None else outputs(output), call,
                                          "module" if outputs is None else "outputs")
            labels = check_targets(f"{call}(targets=...)", move(targets(batch), device), logits, task)
            loss = task_loss(logits, labels, task)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, rows = total + loss.item() * len(labels), rows + len(labels)
        if rows == 0:
            raise G2DError(f"{call}(loader=...): it gave no batches")
        losses.append(total / rows)
        if schedule is not None:
            schedule.step()
    metadata = {"format": FORMAT, "module": f"{type(module).__module__}.{type(module).__qualname__}", "task": task,
                "num_classes": logits.shape[1], "feature_dim": features.shape[1], "epochs": epochs, "train_loss": losses}
    teacher = Teacher(module, outputs, metadata)
    if folder is not None:
        save_teacher(module, folder, metadata)
    return teacher


def teacher_confidences(
    teachers: Mapping[str, Teacher],
    loader: Iterable,
    *,
    inputs: Mapping[str, Callable[[Any], Any]],
    targets: Callable[[Any], torch.Tensor],
    task: str = "classification",
) -> dict[str, float]:
    """Eq. 5 per modality over every row of ``loader``: the sum of each teacher's probability of the true class
    divided by the number of rows (not a mean of batch means, which weighs a short last batch wrongly).

    ``inputs[m](batch)`` is teacher ``m``'s input; the result is what ``SMP.rank`` takes.
    """
    call = "teacher_confidences"
    if not isinstance(teachers, Mapping) or not teachers:
        raise G2DError(f"{call}(teachers=...): expected a non-empty dict {{modality: g2d.Teacher}}, "
                       f"got {type(teachers).__name__ if not isinstance(teachers, Mapping) else 'an empty dict'}")
    for modality, teacher in teachers.items():
        if not isinstance(teacher, Teacher):
            raise G2DError(f"{call}(teachers=...): modality {modality!r} is a {type(teacher).__name__}, not a "
                           "g2d.Teacher; wrap it, g2d.Teacher(module, outputs=...), so it runs frozen in eval mode")
    if not isinstance(inputs, Mapping) or inputs.keys() != teachers.keys():
        given = ", ".join(map(repr, inputs)) if isinstance(inputs, Mapping) else type(inputs).__name__
        raise G2DError(f"{call}(inputs=...): expected one function per teacher, keyed {', '.join(map(repr, teachers))}; "
                       f"got {given}")
    for modality, function in inputs.items():
        check_function(f"{call}(inputs=...)", function, f"teacher {modality!r}'s input")
    check_function(f"{call}(targets=...)", targets, "the targets")
    check_loader(f"{call}(loader=...)", loader)
    check_task(f"{call}(task=...)", task)
    devices = {m: device_of(teacher) for m, teacher in teachers.items()}
    sums = {m: torch.zeros((), dtype=torch.float64, device=devices[m]) for m in teachers}
    rows = 0
    for batch in loader:
        labels = targets(batch)
        for m, teacher in teachers.items():
            logits = teacher(move(inputs[m](batch), devices[m]))[1]
            checked = check_targets(f"{call}(targets=...)", move(labels, devices[m]), logits, task)
            sums[m] += sample_confidence(logits, checked, task).double().sum()
        rows += len(logits)
    if rows == 0:
        raise G2DError(f"{call}(loader=...): it gave no rows")
    return {m: total.item() / rows for m, total in sums.items()}
