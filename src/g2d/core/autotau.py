"""``smp.tau: auto``: SMP phases that end themselves, judged on the validation split.

Phase j prioritizes the j-th weakest modality (by the teachers' training-set confidence, for the
ranked and the dynamic schedule alike). After each epoch's validation, the phase's score is that
modality's validation accuracy inside the student (minus its MSE for regression). The phase ends
when the score has not risen by more than ``min_delta`` above its best of this phase for
``patience`` epochs in a row (``plateau``), or when the phase has lasted ``max_share`` of
``trainer.epochs`` (``max_share``); the next phase starts with the next epoch. Only the host
values below change, and only between epochs, so a captured CUDA graph never bakes a stale
phase in. The state is a plain dict saved with each checkpoint, so a resumed run ends its
phases at the same epochs as an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Any

from g2d.config import AutoTauConfig
from g2d.errors import G2DError


def patience_for(config: AutoTauConfig, epochs: int) -> int:
    """``patience``, or by default 5 % of training (at least 2 epochs)."""
    if config.patience is not None:
        return int(config.patience)
    return max(2, math.ceil(0.05 * epochs))


def phase_cap(config: AutoTauConfig, phases: int, epochs: int) -> int:
    """The most epochs one phase may take: ``max_share`` of training, by default half of training split
    evenly among the phases (the default tau, which auto can therefore only shorten)."""
    share = config.max_share if config.max_share is not None else 0.5 / phases
    return max(1, int(share * epochs))


def check_auto(config: AutoTauConfig, phases: int, epochs: int) -> None:
    """Refuse parameters that cannot work; the error names the ``smp.auto`` key at fault."""
    if config.patience is not None and config.patience < 1:
        raise G2DError(f"config key smp.auto.patience: must be at least 1 epoch, got {config.patience}")
    if not config.min_delta >= 0:
        raise G2DError(f"config key smp.auto.min_delta: must be >= 0, got {config.min_delta}")
    if config.max_share is not None and not 0 < config.max_share <= 1:
        raise G2DError(f"config key smp.auto.max_share: must be in (0, 1], got {config.max_share}")
    if phase_cap(config, phases, epochs) * phases > epochs:
        raise G2DError(
            f"config key smp.auto.max_share: {phases} phases of up to {phase_cap(config, phases, epochs)} epochs "
            f"could take more than trainer.epochs={epochs}; a modality might never train jointly"
        )


class AutoTau:
    """The stopping rule of the prioritized phases and its host state."""

    def __init__(self, config: AutoTauConfig, phases: int, epochs: int) -> None:
        check_auto(config, phases, epochs)
        self.min_delta = float(config.min_delta)
        self.patience = patience_for(config, epochs)
        self.cap = phase_cap(config, phases, epochs)
        self.phases = phases
        self.chosen: list[int] = []
        self.ended_by: list[str] = []
        self.best: float | None = None
        self.stale = 0

    @property
    def tau(self) -> list[int]:
        """Ended phases' lengths, then the cap for the running phase and each later one: ``phase_of``
        on this list gives the right phase for every epoch trained so far and the next one."""
        return self.chosen + [self.cap] * (self.phases - len(self.chosen))

    @property
    def phase(self) -> int:
        """The running phase (``phases`` once all modalities train together)."""
        return len(self.chosen)

    def observe(self, epoch: int, score: float) -> bool:
        """Take the validation score of the running phase's modality after ``epoch``; True if the phase ended."""
        if self.phase >= self.phases:
            return False
        if self.best is None or score > self.best + self.min_delta:
            self.best, self.stale = score, 0
        else:
            self.stale += 1
        length = epoch + 1 - sum(self.chosen)
        reason = "plateau" if self.stale >= self.patience else "max_share" if length >= self.cap else None
        if reason is None:
            return False
        self.chosen.append(length)
        self.ended_by.append(reason)
        self.best, self.stale = None, 0
        return True

    def state_dict(self) -> dict[str, Any]:
        """Plain host values (JSON-safe), committed with each checkpoint."""
        return {"chosen": list(self.chosen), "ended_by": list(self.ended_by), "best": self.best, "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved."""
        self.chosen = [int(t) for t in state["chosen"]]
        self.ended_by = list(state["ended_by"])
        self.best = state["best"]
        self.stale = int(state["stale"])


def modality_score(val: dict, modality: str, task: str) -> float:
    """The student's validation score of one modality: accuracy, or minus MSE for regression (higher is better)."""
    metrics = val["per_modality"][modality]
    return metrics["accuracy"] if task == "classification" else -metrics["mse"]
