"""MSLR (Yao & Mihalcea, Findings of ACL 2022): modality-specific learning rates.

Each modality's encoder steps with its own learning rate, the run's rate times a factor:
- ``keep``: the factor is ``lr_scale[m]`` throughout (the paper's idea of giving each
  modality the rate its unimodal model trains best with, expressed relative to optim.lr).
- ``dynamic`` (default): after every epoch, once ``window`` earlier epochs are remembered,
  the factor becomes ``lr_scale[m] * a_m / mean(previous window of a_m)``, where a_m is the
  modality's validation accuracy inside the model (1 - MSE for regression); a modality whose
  validation accuracy rises above its recent average learns faster, one that falls slows.

The dynamic rule, window 5 and per-modality initial scales are those of the MSLR baseline
in the AGM authors' code, which the G²D comparison used; the paper's text was not available
here to check its third ("smooth") strategy, which is therefore not offered. The factors
act on the optimizer's ``encoder:<m>`` param groups for each step and are undone after it,
so the learning-rate schedule and checkpoints keep the run's own rates. The AGM code also
scales the modality's own classifier; here fusion parameters, shared in general, keep the
run's rate. SMP, when enabled, scales gradients on top of these rates, as for every method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from g2d.config import Choice
from g2d.core.losses import task_loss
from g2d.errors import G2DError
from g2d.methods.base import (
    AT_LEAST_0,
    AT_LEAST_1,
    METHODS,
    Method,
    MethodContext,
    TeacherOutputs,
    check_numbers,
)
from g2d.models.multimodal import ModelOutput


class Strategy(Choice):
    dynamic = "dynamic"
    keep = "keep"


@dataclass
class MSLRParams:
    """strategy: dynamic or keep; lr_scale: per-modality factors on optim.lr (1 when absent); window: epochs averaged."""

    strategy: Strategy = Strategy.dynamic
    lr_scale: dict[str, float] = field(default_factory=dict)
    window: int = 5

    def __post_init__(self) -> None:
        check_numbers(self, "mslr", {"lr_scale": AT_LEAST_0, "window": AT_LEAST_1})


def validation_score(metrics: dict) -> float:
    """Accuracy for classification; 1 - MSE (on the [0, 1] target scale) for regression."""
    if "accuracy" in metrics:
        return float(metrics["accuracy"])
    return 1.0 - float(metrics["mse"])


@METHODS.register("mslr")
class MSLR(Method):
    """Joint training with a learning rate per modality encoder, adapted from validation accuracy."""

    label = "MSLR"
    data_parallel = True  # one forward and backward per step; learning rates come from gathered validation
    Params = MSLRParams
    capturable = True

    def __init__(self, params: MSLRParams, task: str, modalities: list[str]) -> None:
        super().__init__(params, task, modalities)
        unknown = sorted(set(params.lr_scale) - set(modalities))
        if unknown:
            raise G2DError(f"config key method.mslr.lr_scale.{unknown[0]}: not one of the modalities ({', '.join(modalities)})")
        self.initial = {m: float(params.lr_scale.get(m, 1.0)) for m in modalities}
        self.factors = dict(self.initial)
        self.memory: dict[str, list[float]] = {m: [] for m in modalities}
        self.reported = torch.tensor([self.factors[m] for m in modalities])

    def setup(self, context: MethodContext) -> None:
        super().setup(context)
        self.reported = self.reported.to(context.device)

    def refresh_report(self) -> None:
        """The factors in their device tensor for the step's terms, in place, once per epoch."""
        self.reported.copy_(torch.tensor([self.factors[m] for m in self.modalities]))

    def loss(
        self, output: ModelOutput, batch: dict[str, torch.Tensor], teachers: TeacherOutputs | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = task_loss(output.logits, batch["label"], self.task)
        return loss, {"task": loss.detach(), **{f"lr_scale/{m}": self.reported[i] for i, m in enumerate(self.modalities)}}

    def learning_rate_factors(self) -> dict[str, float]:
        return {f"encoder:{m}": factor for m, factor in self.factors.items()}

    def on_epoch_end(self, epoch: int, val: dict) -> None:
        if self.params.strategy == "keep":
            return
        for m in self.modalities:
            score = validation_score(val["per_modality"][m])
            memory = self.memory[m]
            if len(memory) == self.params.window:
                average = sum(memory) / len(memory)
                ratio = score / average if average > 0 else 1.0
                self.factors[m] = self.initial[m] * ratio
                memory.pop(0)
            memory.append(score)
        self.refresh_report()

    def state_dict(self) -> dict[str, Any]:
        return {"factors": dict(self.factors), "memory": {m: list(v) for m, v in self.memory.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.factors = {m: float(v) for m, v in state["factors"].items()}
            self.memory = {m: [float(x) for x in v] for m, v in state["memory"].items()}
            self.refresh_report()
