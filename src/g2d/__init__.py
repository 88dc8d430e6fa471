"""g2d: Gradient-Guided Distillation and balanced multimodal learning.

The public API (docs/api.md). Names load on first use (PEP 562), so ``import g2d`` stays cheap
and ``import g2d.errors`` does not pull in torch.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# OpenMP threads that finish early sleep rather than spin (the default spins), so a run beside
# other busy processes does not collapse: a spinning thread takes the core its lagging partner
# needs (measured 10-50x slower steps with 2 threads beside load, docs/performance.md). Read by
# OpenMP when torch loads, so it applies when g2d is imported first; a value already set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Public name -> (module, attribute in that module).
_EXPORTS: dict[str, tuple[str, str]] = {
    "G2DLoss": ("g2d.core.losses", "G2DLoss"),
    "confidence": ("g2d.core.losses", "confidence"),
    "SMP": ("g2d.core.smp", "SMP"),
    "SMPCallback": ("g2d.training.lightning", "SMPCallback"),
    "Teacher": ("g2d.training.teachers", "Teacher"),
    "load_teacher": ("g2d.training.teachers", "load_teacher_folder"),
    "train_teacher": ("g2d.training.own_teachers", "train_teacher"),
    "teacher_confidences": ("g2d.training.own_teachers", "teacher_confidences"),
    "train_teachers": ("g2d.runs.experiment", "train_teachers"),
    "load_config": ("g2d.config", "load_config"),
    "load_dataset": ("g2d.data", "load_dataset"),
    "run": ("g2d.runs.experiment", "run"),
    "G2DError": ("g2d.errors", "G2DError"),
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from g2d.config import load_config
    from g2d.core.losses import G2DLoss, confidence
    from g2d.core.smp import SMP
    from g2d.data import load_dataset
    from g2d.errors import G2DError
    from g2d.runs.experiment import run, train_teachers
    from g2d.training.lightning import SMPCallback
    from g2d.training.own_teachers import teacher_confidences, train_teacher
    from g2d.training.teachers import Teacher
    from g2d.training.teachers import load_teacher_folder as load_teacher


def __getattr__(name: str) -> Any:
    """Import the module behind a public name the first time it is used."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'g2d' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
