"""SMP in a Lightning Trainer: a callback that drives ``g2d.SMP`` from any LightningModule.

Needs the optional ``lightning`` package (``pip install g2d[lightning]``); nothing else in g2d
imports this module.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from g2d.core.smp import SMP
from g2d.errors import G2DError


class SMPCallback(pl.Callback):
    """Starts SMP's epoch with each training epoch and applies Eq. 7-8 before each optimizer step.

    kappa reaches each gradient once per optimizer step: with ``accumulate_grad_batches`` Lightning
    steps (and this callback applies) once after the last micro-batch; with several optimizers
    (manual optimization) each ``step`` calls ``apply``, which leaves gradients that already hold
    kappa as they are. Under the dynamic schedule the module's ``training_step`` sets
    ``self.smp_batch = (teacher_logits, targets)`` for each batch it trains on; the callback takes it
    after each backward and ranks the step on every micro-batch it gathered. The coefficients
    applied last are kept in ``applied``.
    """

    def __init__(self, smp: SMP) -> None:
        super().__init__()
        if not isinstance(smp, SMP):
            raise G2DError(f"SMPCallback(smp=...): must be a g2d.SMP, got {type(smp).__name__}")
        self.smp = smp
        self.applied: dict[str, float] = {}
        self.batches: list[tuple[dict[str, torch.Tensor], torch.Tensor]] = []
        self.stepped = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.smp.start_epoch(trainer.current_epoch)
        self.batches, self.stepped = [], False

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Gather the micro-batch's teacher logits; a backward after a step starts the next step's list."""
        if self.stepped:
            self.batches, self.stepped = [], False
        batch = getattr(pl_module, "smp_batch", None)
        if batch is not None:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise G2DError("SMPCallback: the module's smp_batch must be a (teacher_logits, targets) pair, got "
                               f"{type(batch).__name__}")
            self.batches.append((batch[0], batch[1]))
            pl_module.smp_batch = None  # each batch sets its own: a stale one is never ranked twice

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        teacher_logits, targets = self.batches[0] if len(self.batches) == 1 else (None, None)
        if len(self.batches) > 1:  # accumulated micro-batches: the step is ranked on all their rows
            try:
                teacher_logits = {m: torch.cat([logits[m] for logits, _ in self.batches]) for m in self.batches[0][0]}
                targets = torch.cat([batch_targets for _, batch_targets in self.batches])
            except (TypeError, KeyError, RuntimeError) as exc:
                raise G2DError(f"SMPCallback: the micro-batches' smp_batch pairs do not join into one batch "
                               f"({str(exc).splitlines()[0]}); each must be ({{modality: [B, C] logits}}, [B] targets)"
                               ) from exc
        self.applied = self.smp.apply(teacher_logits=teacher_logits, targets=targets)
        self.stepped = True

    def state_dict(self) -> dict[str, Any]:
        return {"smp": self.smp.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.smp.load_state_dict(state_dict.get("smp", {}))
