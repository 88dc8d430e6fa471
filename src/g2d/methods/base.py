"""The method interface: a method turns the model's (and teachers') outputs into the step's loss.

A method owns only its loss and its epoch hooks; the training loop, optimizer and gradient
modulation live in ``g2d.engine`` and ``g2d.methods.smp`` so that every method gets them.
Each method declares its hyperparameters as a dataclass; the config's ``method`` mapping is
checked against it, so a misspelt key is an error naming ``method.<name>.<key>``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from g2d.errors import G2DError
from g2d.models.multimodal import ModelOutput


@dataclass
class TeacherOutputs:
    """Frozen unimodal teachers' encoder features and logits, keyed by modality."""

    features: dict[str, torch.Tensor]
    logits: dict[str, torch.Tensor]

    def stacked_logits(self, modalities: list[str]) -> torch.Tensor:
        return torch.stack([self.logits[m] for m in modalities])


@dataclass
class NoParams:
    """A method without hyperparameters."""


class Method:
    """Base class: ``loss`` returns the scalar to back-propagate and named terms for logging."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    uses_teachers: ClassVar[bool] = False
    smp_by_default: ClassVar[bool] = False

    def __init__(self, params: Any, task: str, modalities: list[str]) -> None:
        self.params = params
        self.task = task
        self.modalities = modalities

    def loss(
        self, output: ModelOutput, batch: dict[str, torch.Tensor], teachers: TeacherOutputs | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for methods whose behaviour changes with the epoch."""


def parse_params(params_type: type, values: dict[str, Any], prefix: str) -> Any:
    """Check ``values`` (the config's ``method.<name>`` mapping) against ``params_type``."""
    known = {f.name for f in fields(params_type)}
    unknown = sorted(set(values) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise G2DError(f"config key {prefix}.{unknown[0]}: not a hyperparameter of this method (allowed: {allowed})")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(params_type), values)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or ""
        raise G2DError(f"config key {prefix}.{key}: {str(exc).splitlines()[0]}") from exc
