"""Frozen teachers for the fast path: inference mode, the run's precision, and a per-row cache.

The teachers never change during a student run, and when the input pipeline is
deterministic (``MultimodalData.deterministic``) a row's teacher features and logits are
the same in every epoch. ``TeacherCache`` computes them once per training row; a student
step then gathers them by the batch's ``"index"``, so an epoch costs no teacher forward pass.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from g2d.data.base import Batches, MultimodalData, to_device
from g2d.data.feed import INDEX_KEY
from g2d.methods.base import TeacherOutputs


def autocast_context(device: torch.device, dtype: torch.dtype | None, cache: bool = True) -> Any:
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing for fp32 (``dtype`` None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


def as_normal_tensor(value: torch.Tensor) -> torch.Tensor:
    """A float32 copy outside inference mode, so autograd may save it (inference tensors cannot be)."""
    return value.to(torch.float32, copy=True)


class TeacherCache:
    """Teacher features ``[N, d_m]`` and logits ``[N, K]`` for every row of one split, in float32."""

    def __init__(self, features: dict[str, torch.Tensor], logits: dict[str, torch.Tensor]) -> None:
        self.features = features
        self.logits = logits

    @property
    def rows(self) -> int:
        return len(next(iter(self.logits.values())))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.features.values(), *self.logits.values()))

    @classmethod
    def build(
        cls, teachers: "FrozenTeachers", data: MultimodalData, split: str, device: torch.device, batch_size: int
    ) -> "TeacherCache":
        """Run ``teachers`` once over ``split`` in order and keep their outputs on ``device``."""
        features: dict[str, list[torch.Tensor]] = {}
        logits: dict[str, list[torch.Tensor]] = {}
        for batch in Batches(data.splits[split], batch_size, shuffle=False):
            outputs = teachers.run(to_device(batch, data, device))
            for modality in outputs.logits:
                features.setdefault(modality, []).append(outputs.features[modality])
                logits.setdefault(modality, []).append(outputs.logits[modality])
        return cls({m: torch.cat(v) for m, v in features.items()}, {m: torch.cat(v) for m, v in logits.items()})

    def lookup(self, index: torch.Tensor) -> TeacherOutputs:
        """The cached outputs of rows ``index`` (a device tensor gather, capturable in a CUDA graph)."""
        return TeacherOutputs(
            features={m: t.index_select(0, index) for m, t in self.features.items()},
            logits={m: t.index_select(0, index) for m, t in self.logits.items()},
        )


class FrozenTeachers:
    """The run's frozen teachers, as both training paths use them (``MethodContext.teachers``).

    Without a cache (the reference path, or data transformed at random) a call runs the
    ensemble under ``torch.inference_mode`` and autocast to ``dtype`` (None: fp32) and returns
    float32 copies. With a cache (``TeacherCache``, built by the fast path for deterministic
    data) a call answers a training batch from the cache by its rows, ``"index"``, which every
    batch of the fast path's feeds carries; a batch without it is an error, never a silent
    teacher pass on other inputs.
    """

    def __init__(self, ensemble: Any, device: torch.device, dtype: torch.dtype | None) -> None:
        self.ensemble = ensemble
        self.device = device
        self.dtype = dtype
        self.cache: TeacherCache | None = None

    @property
    def teachers(self) -> Any:
        """The ensemble's teacher modules, keyed by modality (as on ``TeacherEnsemble``)."""
        return self.ensemble.teachers

    def run(self, inputs: dict[str, torch.Tensor]) -> TeacherOutputs:
        """A forward pass of every teacher, in inference mode and the fast path's precision."""
        with torch.inference_mode(), autocast_context(self.device, self.dtype):
            outputs = self.ensemble(inputs)
        return TeacherOutputs(
            features={m: as_normal_tensor(t) for m, t in outputs.features.items()},
            logits={m: as_normal_tensor(t) for m, t in outputs.logits.items()},
        )

    def __call__(self, inputs: dict[str, torch.Tensor]) -> TeacherOutputs:
        """The teachers' outputs for a training batch: from the cache by its rows, or computed."""
        if self.cache is None:
            return self.run(inputs)
        if INDEX_KEY not in inputs:
            raise ValueError("cached teacher outputs are looked up by the batch's rows ('index'); this batch has none")
        return self.cache.lookup(inputs[INDEX_KEY])
