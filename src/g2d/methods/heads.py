"""Heads that a method adds to the model: one linear head per modality, or one head shared by all.

A method that classifies each modality on its own terms (UME, MMPareto's unimodal losses) or
through one common classifier (MLA, ReconBoost) builds these in ``build_modules``; they read
the encoders' features, so they work whatever fusion the model was built with.
"""

from __future__ import annotations

import torch
from torch import nn

from g2d.data.base import mask_key
from g2d.models.fusion import make_linear


class ModalityHeads(nn.Module):
    """A linear classifier per modality on that modality's encoder features."""

    def __init__(self, feature_dims: dict[str, int], num_outputs: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({m: make_linear(d, num_outputs) for m, d in feature_dims.items()})

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: head(features[m]) for m, head in self.heads.items()}


class SharedHead(nn.Module):
    """One classifier applied to every modality's features.

    Encoders may give features of different sizes; each modality whose size differs from
    the largest is first mapped to that size by its own linear projection (trained with that
    modality), so the shared head sees one input space. ``hidden`` > 0 makes the head an
    MLP ``Linear -> ReLU -> Linear`` (ReconBoost's common head); 0 makes it one Linear
    layer (MLA's), whose weight is ``self.output``.
    """

    def __init__(self, feature_dims: dict[str, int], num_outputs: int, hidden: int = 0) -> None:
        super().__init__()
        self.input_dim = max(feature_dims.values())
        self.projections = nn.ModuleDict(
            {m: make_linear(d, self.input_dim) for m, d in feature_dims.items() if d != self.input_dim}
        )
        if hidden > 0:
            self.hidden: nn.Module = nn.Sequential(make_linear(self.input_dim, hidden), nn.ReLU())
            self.output = make_linear(hidden, num_outputs)
        else:
            self.hidden = nn.Identity()
            self.output = make_linear(self.input_dim, num_outputs)

    def project(self, modality: str, features: torch.Tensor) -> torch.Tensor:
        """The head's input for ``modality``: its features, projected when their size differs."""
        if modality in self.projections:
            return self.projections[modality](features)
        return features

    def classify(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits from inputs already in the head's space (see ``project``)."""
        return self.output(self.hidden(inputs))

    def forward(self, modality: str, features: torch.Tensor) -> torch.Tensor:
        return self.classify(self.project(modality, features))


def encoder_features(model: nn.Module, inputs: dict[str, torch.Tensor], modality: str) -> torch.Tensor:
    """One modality's encoder features, without running the fusion (for methods that bypass it)."""
    return model.encoders[modality](inputs[modality], inputs.get(mask_key(modality)))
