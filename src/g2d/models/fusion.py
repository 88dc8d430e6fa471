"""Fusion modules: combine per-modality features into fused logits plus per-modality logits.

Every fusion is k-modal (k >= 1) and returns ``(fused, {modality: logits})``; the
per-modality logits are what the balancing methods measure and distil. A new fusion is a
``Fusion`` subclass added to ``FUSIONS``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from g2d.errors import G2DError


def make_linear(in_dim: int, out_dim: int) -> nn.Linear:
    """A Linear layer with the paper's init: Xavier normal weight, zero bias."""
    layer = nn.Linear(in_dim, out_dim)
    nn.init.xavier_normal_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class Fusion(nn.Module):
    """Base class: maps ``{modality: features [B, d_m]}`` to fused and per-modality logits ``[B, num_outputs]``."""

    def __init__(self, modalities: list[str], feature_dims: dict[str, int], num_outputs: int) -> None:
        super().__init__()
        if len(modalities) == 0:
            raise G2DError("dataset.modalities: a model needs at least one modality")
        missing = [m for m in modalities if m not in feature_dims]
        if missing:
            raise G2DError(f"model.fusion: no feature size given for modality {missing[0]!r}")
        if num_outputs < 1:
            raise G2DError(f"model.fusion: the number of outputs must be >= 1, got {num_outputs}")
        self.modalities = list(modalities)
        self.feature_dims = {m: int(feature_dims[m]) for m in modalities}
        self.num_outputs = num_outputs

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError


class LateFusion(Fusion):
    """One Linear head per modality; the fused logits are the mean of the heads' logits (the paper's default)."""

    def __init__(self, modalities: list[str], feature_dims: dict[str, int], num_outputs: int) -> None:
        super().__init__(modalities, feature_dims, num_outputs)
        self.heads = nn.ModuleDict({m: make_linear(self.feature_dims[m], num_outputs) for m in self.modalities})

    def combine(self, stacked: Tensor) -> Tensor:
        return stacked.mean(dim=0)

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        per_modality = {m: self.heads[m](features[m]) for m in self.modalities}
        fused = self.combine(torch.stack([per_modality[m] for m in self.modalities]))
        return fused, per_modality


class SumFusion(LateFusion):
    """Late fusion's per-modality heads, with the fused logits the sum of the heads' logits (A.3.1)."""

    def combine(self, stacked: Tensor) -> Tensor:
        return stacked.sum(dim=0)


class ConcatFusion(Fusion):
    """One Linear on the concatenated features; per-modality logits use that modality's slice of the weight.

    Modality m's logits are ``f_m @ W[:, slice_m].T + bias / k``, so they sum exactly to the fused logits.
    """

    def __init__(self, modalities: list[str], feature_dims: dict[str, int], num_outputs: int) -> None:
        super().__init__(modalities, feature_dims, num_outputs)
        self.head = make_linear(sum(self.feature_dims.values()), num_outputs)
        self.slices: dict[str, tuple[int, int]] = {}
        start = 0
        for m in self.modalities:
            self.slices[m] = (start, start + self.feature_dims[m])
            start += self.feature_dims[m]

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        fused = self.head(torch.cat([features[m] for m in self.modalities], dim=1))
        bias_share = self.head.bias / len(self.modalities)
        per_modality = {}
        for m in self.modalities:
            start, stop = self.slices[m]
            per_modality[m] = features[m] @ self.head.weight[:, start:stop].t() + bias_share
        return fused, per_modality


FUSIONS: dict[str, type[Fusion]] = {
    "late": LateFusion,
    "sum": SumFusion,
    "concat": ConcatFusion,
}


def build_fusion(name: str, modalities: list[str], feature_dims: dict[str, int], num_outputs: int) -> Fusion:
    """Build the fusion registered as ``name`` (the ``model.fusion`` setting)."""
    if name not in FUSIONS:
        raise G2DError(f"model.fusion: unknown fusion {name!r}; available: {', '.join(sorted(FUSIONS))}")
    return FUSIONS[name](list(modalities), dict(feature_dims), num_outputs)
