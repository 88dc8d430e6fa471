"""MSES (Fujimori et al., ACPR 2019): modality-specific early stopping.

After every epoch each modality's validation loss (its own head inside the multimodal model)
is smoothed, s_t = smoothing * s_{t-1} + (1 - smoothing) * loss_t. When a modality's
smoothed loss has not reached a new minimum for more than ``patience`` epochs, that
modality stops: from the next epoch on its encoder's learning rate is 0 (no gradient step, no
momentum, no weight decay moves it), and with ``restore_best`` its encoder weights first go
back to those of its best epoch. The other modalities keep training. Stops are method state, so
they survive ``trainer.resume``.

Defaults follow the MSES baseline in the AGM authors' code (used for the G²D comparison):
smoothing weight 0.6 on the past, patience 80 epochs. Deliberate differences: that code
smooths with the previous *raw* loss (a two-tap filter) where we keep an exponential
average, and on a stop it reloads the whole model and optimizer from the stopped modality's
best epoch, which also rolls back the other modalities; we restore that modality's encoder
only. Its stop also covers the modality's own classifier; here only the encoder's param
group stops, because fusion parameters are shared by all modalities in general.
With ``smp.enabled=true``, SMP's kappa scales the gradients as for every method, and a
stopped modality stays stopped (its learning rate stays 0) inside SMP's window too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from g2d.core.losses import task_loss
from g2d.methods.base import AT_LEAST_0, METHODS, Method, MethodContext, TeacherOutputs, check_numbers
from g2d.models.multimodal import ModelOutput


@dataclass
class MSESParams:
    """patience: epochs without a new smoothed minimum before a modality stops; smoothing: weight of the past."""

    patience: int = 80
    smoothing: float = 0.6
    restore_best: bool = True

    def __post_init__(self) -> None:
        check_numbers(self, "mses", {"patience": AT_LEAST_0, "smoothing": ("in [0, 1)", lambda v: 0 <= v < 1)})


@METHODS.register("mses")
class MSES(Method):
    """Joint training in which each modality's encoder stops on its own validation loss plateau."""

    label = "MSES"
    data_parallel = True  # one forward and backward per step; stopping decisions come from gathered validation
    Params = MSESParams
    capturable = True

    def __init__(self, params: MSESParams, task: str, modalities: list[str]) -> None:
        super().__init__(params, task, modalities)
        self.smoothed: dict[str, float] = {}
        self.best: dict[str, float] = {}
        self.best_epoch: dict[str, int] = {}
        self.stopped: dict[str, bool] = {m: False for m in modalities}
        self.best_weights: dict[str, dict[str, torch.Tensor]] = {}
        self.training_flags = torch.ones(len(modalities))

    def setup(self, context: MethodContext) -> None:
        super().setup(context)
        self.training_flags = self.training_flags.to(context.device)

    def loss(
        self, output: ModelOutput, batch: dict[str, torch.Tensor], teachers: TeacherOutputs | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The task loss; the terms report which encoders still train (1) or have stopped (0)."""
        loss = task_loss(output.logits, batch["label"], self.task)
        flags = {f"training/{m}": self.training_flags[i] for i, m in enumerate(self.modalities)}
        return loss, {"task": loss.detach(), **flags}

    def learning_rate_factors(self) -> dict[str, float]:
        """A stopped modality's encoder steps with learning rate 0: nothing moves it."""
        return {f"encoder:{m}": 0.0 for m in self.modalities if self.stopped[m]}

    def on_epoch_end(self, epoch: int, val: dict) -> None:
        encoders = self.ctx.model.encoders
        for m in self.modalities:
            if self.stopped[m]:
                continue
            loss = float(val["per_modality"][m]["loss"])
            previous = self.smoothed.get(m)
            smoothed = loss if previous is None else self.params.smoothing * previous + (1 - self.params.smoothing) * loss
            self.smoothed[m] = smoothed
            if m not in self.best or smoothed < self.best[m]:
                self.best[m], self.best_epoch[m] = smoothed, epoch
                if self.params.restore_best:
                    self.best_weights[m] = {k: v.detach().clone() for k, v in encoders[m].state_dict().items()}
            elif epoch - self.best_epoch[m] > self.params.patience:
                self.stop(m)

    def stop(self, modality: str) -> None:
        """Freeze ``modality``'s encoder from the next epoch on (its best weights come back then)."""
        self.stopped[modality] = True
        self.refresh_flags()

    def refresh_flags(self) -> None:
        """The stop flags in their device tensor, in place (a captured step reads that storage)."""
        self.training_flags.copy_(torch.tensor([0.0 if self.stopped[m] else 1.0 for m in self.modalities]))

    def on_epoch_start(self, epoch: int) -> None:
        """Restore stopped encoders' best weights here, not at the stop, so the epoch just evaluated
        is checkpointed with the weights its validation metrics describe."""
        for m in self.modalities:
            if self.stopped[m] and m in self.best_weights:
                self.ctx.model.encoders[m].load_state_dict(self.best_weights.pop(m))

    def state_dict(self) -> dict[str, Any]:
        return {
            "smoothed": dict(self.smoothed),
            "best": dict(self.best),
            "best_epoch": dict(self.best_epoch),
            "stopped": dict(self.stopped),
            "best_weights": {m: {k: v.cpu() for k, v in w.items()} for m, w in self.best_weights.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.smoothed = {m: float(v) for m, v in state["smoothed"].items()}
        self.best = {m: float(v) for m, v in state["best"].items()}
        self.best_epoch = {m: int(v) for m, v in state["best_epoch"].items()}
        self.stopped = {m: bool(v) for m, v in state["stopped"].items()}
        self.best_weights = {m: {k: v.to(self.ctx.device) for k, v in w.items()} for m, w in state["best_weights"].items()}
        self.refresh_flags()
