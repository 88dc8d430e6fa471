"""SMP in a Lightning Trainer: a callback that drives ``g2d.SMP`` from any LightningModule.

Needs the optional ``lightning`` package (``pip install g2d[lightning]``); nothing else in g2d
imports this module.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from g2d.core.smp import SMP


class SMPCallback(pl.Callback):
    """Starts SMP's epoch with each training epoch and applies Eq. 7-8 before each optimizer step.

    Under the dynamic schedule SMP ranks each batch: the module's ``training_step`` then sets
    ``self.smp_batch = (teacher_logits, targets)`` for the batch it trains on. The coefficients
    applied last are kept in ``applied`` (and logged as ``kappa/<modality>`` when the module logs).
    """

    def __init__(self, smp: SMP) -> None:
        super().__init__()
        self.smp = smp
        self.applied: dict[str, float] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.smp.start_epoch(trainer.current_epoch)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        teacher_logits, targets = getattr(pl_module, "smp_batch", None) or (None, None)
        self.applied = self.smp.apply(teacher_logits=teacher_logits, targets=targets)

    def state_dict(self) -> dict[str, Any]:
        return {"smp": self.smp.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.smp.load_state_dict(state_dict.get("smp", {}))
