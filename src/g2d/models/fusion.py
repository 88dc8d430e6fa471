"""Fusion modules: combine per-modality features into fused logits plus per-modality logits.

Every fusion returns ``(fused, {modality: logits})``, all ``[B, num_outputs]``; the
per-modality logits are what per-modality evaluation scores and what balancing methods
measure and distil, so they must depend on (and back-propagate to) that modality alone. How
each fusion forms them follows the paper's A.5 (see docs/models.md): late and sum use each
modality's own head, concat a partition of its head, and the interaction fusions (FiLM,
gated, cross-attention) their own fused output with every other modality deactivated.
Late, sum and concat accept k >= 1 modalities, the interaction fusions k >= 2. A new fusion
is a ``Fusion`` subclass registered where it is defined (``@FUSIONS.register("name")``); its
settings are a dataclass named by its ``Settings`` attribute, filled from ``model.fusion_settings``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor, nn

from g2d.config import parse_settings
from g2d.errors import G2DError
from g2d.registry import Registry


def make_linear(in_dim: int, out_dim: int) -> nn.Linear:
    """A Linear layer with the paper's init: Xavier normal weight, zero bias."""
    layer = nn.Linear(in_dim, out_dim)
    nn.init.xavier_normal_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


@dataclass
class NoSettings:
    """A fusion without settings."""


@dataclass
class HiddenSettings:
    """``hidden``: the common width every modality is projected to; null (the default) takes the largest
    feature size ``max_m d_m``."""

    hidden: Optional[int] = None

    def __post_init__(self) -> None:
        if self.hidden is not None and self.hidden < 1:
            raise G2DError(f"config key model.fusion_settings.hidden: must be at least 1, got {self.hidden}")

    def width(self, feature_dims: dict[str, int]) -> int:
        return self.hidden if self.hidden is not None else max(feature_dims.values())


class Fusion(nn.Module):
    """Base class: maps ``{modality: features [B, d_m]}`` to fused and per-modality logits ``[B, num_outputs]``.

    Its record is its class: ``name`` (given by ``@FUSIONS.register``) and ``Settings``, the dataclass of
    its settings (``model.fusion_settings``), handed to ``__init__`` checked."""

    name: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings

    def __init__(self, modalities: list[str], feature_dims: dict[str, int], num_outputs: int,
                 settings: Any = None) -> None:
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
        self.settings = settings if settings is not None else self.Settings()

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError


# ``@FUSIONS.register("name")`` on the class: ``model.fusion=name`` selects it.
FUSIONS: Registry[type[Fusion]] = Registry("fusion", "model.fusion")


@FUSIONS.register("late")
class LateFusion(Fusion):
    """One Linear head per modality; the fused logits are the mean of the heads' logits (the paper's default)."""

    def __init__(self, modalities: list[str], feature_dims: dict[str, int], num_outputs: int,
                 settings: Any = None) -> None:
        super().__init__(modalities, feature_dims, num_outputs, settings)
        self.heads = nn.ModuleDict({m: make_linear(self.feature_dims[m], num_outputs) for m in self.modalities})

    def combine(self, stacked: Tensor) -> Tensor:
        return stacked.mean(dim=0)

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        per_modality = {m: self.heads[m](features[m]) for m in self.modalities}
        fused = self.combine(torch.stack([per_modality[m] for m in self.modalities]))
        return fused, per_modality


@FUSIONS.register("sum")
class SumFusion(LateFusion):
    """Late fusion's per-modality heads, with the fused logits the sum of the heads' logits (A.3.1)."""

    def combine(self, stacked: Tensor) -> Tensor:
        return stacked.sum(dim=0)


@FUSIONS.register("concat")
class ConcatFusion(Fusion):
    """One Linear on the concatenated features; per-modality logits use that modality's slice of the weight.

    Modality m's logits are ``f_m @ W[:, slice_m].T + bias / k``, so they sum exactly to the fused logits.
    """

    def __init__(self, modalities: list[str], feature_dims: dict[str, int], num_outputs: int,
                 settings: Any = None) -> None:
        super().__init__(modalities, feature_dims, num_outputs, settings)
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


class DeactivationFusion(Fusion):
    """A fusion whose modality m logits are its own fused output with every other modality deactivated.

    A.5 (after MLA [46]) measures a modality inside FiLM, BiGated and cross-attention models
    by deactivating the others; here that means zeroing their encoder features, the input
    the fusion sees. The zeros are constants, so modality m's
    logits carry gradient to m's features (and the fusion's weights) and to no other
    modality. The full input and the k single-modality inputs go through ``fuse`` as one
    batch of ``(k + 1) * B`` rows, which is exact because ``fuse`` treats rows independently.
    """

    def __init__(self, modalities: list[str], feature_dims: dict[str, int], num_outputs: int,
                 settings: Any = None) -> None:
        super().__init__(modalities, feature_dims, num_outputs, settings)
        if len(self.modalities) < 2:
            raise G2DError(
                f"model.fusion: {self.name} fuses modalities with each other and needs at least two, "
                f"got {', '.join(self.modalities)}; use late for a single modality"
            )

    def fuse(self, features: dict[str, Tensor]) -> Tensor:
        """Fused logits ``[N, num_outputs]`` from features ``{modality: [N, d_m]}``; rows independent."""
        raise NotImplementedError

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        alone = [{m: f if m == kept else torch.zeros_like(f) for m, f in features.items()} for kept in self.modalities]
        rows = [features, *alone]
        stacked = {m: torch.cat([row[m] for row in rows]) for m in self.modalities}
        logits = self.fuse(stacked).unflatten(0, (len(rows), -1))
        return logits[0], {m: logits[1 + i] for i, m in enumerate(self.modalities)}


@FUSIONS.register("film")
class FiLMFusion(DeactivationFusion):
    """Feature-wise linear modulation (A.3.3) in which every modality is modulated by all the others.

    ``h_m = gamma_m * f_m + beta_m`` with ``[gamma_m, beta_m] = W_m [f_j for j != m] + b_m``
    (one Linear per modality, from the concatenated other features to ``2 d_m``), and
    ``fused = head([h_1, ..., h_k])``. The paper does not say which of two modalities
    conditions the other; conditioning each on the rest treats all modalities alike, makes
    the two-modality case bidirectional FiLM, and for k > 2 lets every modality scale and
    shift every other. Feature sizes may differ: ``W_m`` maps to m's own size, so nothing is
    projected.
    """

    def __init__(self, modalities: list[str], feature_dims: dict[str, int], num_outputs: int,
                 settings: Any = None) -> None:
        super().__init__(modalities, feature_dims, num_outputs, settings)
        dims = self.feature_dims
        total = sum(dims.values())
        self.film = nn.ModuleDict({m: make_linear(total - dims[m], 2 * dims[m]) for m in self.modalities})
        self.head = make_linear(total, num_outputs)

    def modulated(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """``{m: gamma_m * f_m + beta_m}``, each conditioned on the other modalities."""
        out = {}
        for m in self.modalities:
            others = torch.cat([features[j] for j in self.modalities if j != m], dim=1)
            gamma, beta = self.film[m](others).chunk(2, dim=1)
            out[m] = gamma * features[m] + beta
        return out

    def fuse(self, features: dict[str, Tensor]) -> Tensor:
        modulated = self.modulated(features)
        return self.head(torch.cat([modulated[m] for m in self.modalities], dim=1))


@FUSIONS.register("gated")
class GatedFusion(DeactivationFusion):
    """Gated fusion (the paper's BiGated, A.3.4): each modality's hidden state gated by the others'.

    Each modality has its own Linear to a common hidden size ``d``
    (``model.fusion_settings.hidden``; by default ``max_m d_m``), ``z_m = W_m f_m + b_m``; its gate
    is ``g_m = sigmoid(mean_{j != m} z_j)`` and ``fused = head(sum_m g_m * z_m)``. With two
    modalities each hidden state gates the other (the bidirectional form of OGM-GE's one-way gate);
    for k > 2 the gate averages the other modalities' hidden states before the sigmoid, so every
    other modality has a say and the gate's scale does not shrink with k (a product of k - 1
    sigmoids would).
    """

    Settings = HiddenSettings

    def __init__(self, modalities: list[str], feature_dims: dict[str, int], num_outputs: int,
                 settings: Any = None) -> None:
        super().__init__(modalities, feature_dims, num_outputs, settings)
        self.hidden_dim = self.settings.width(self.feature_dims)
        self.hidden = nn.ModuleDict({m: make_linear(self.feature_dims[m], self.hidden_dim) for m in self.modalities})
        self.head = make_linear(self.hidden_dim, num_outputs)

    def gated(self, features: dict[str, Tensor]) -> Tensor:
        """``sum_m g_m * z_m`` ``[N, d]``: the representation the head classifies."""
        hidden = torch.stack([self.hidden[m](features[m]) for m in self.modalities])
        k = len(self.modalities)
        others_mean = (hidden.sum(dim=0, keepdim=True) - hidden) / (k - 1)
        return (torch.sigmoid(others_mean) * hidden).sum(dim=0)

    def fuse(self, features: dict[str, Tensor]) -> Tensor:
        return self.head(self.gated(features))


@FUSIONS.register("cross_attention")
class CrossAttentionFusion(DeactivationFusion):
    """Cross-attention fusion (A.3.5): each modality's token attends across all modalities' tokens.

    Features are vectors, so each modality is one token, projected by its own Linear to a common
    size ``d`` (``model.fusion_settings.hidden``; by default ``max_m d_m``): ``t_m = P_m f_m``. As
    in CrossViT [4], whose query token attends over its own token together with the other branch's
    tokens, modality m's query attends over all k tokens: bidirectional for two modalities,
    all-directional for more (attending over the others alone would, for two modalities, be a
    softmax over one key, always 1). Single head, scaled dot product: ``a_m = softmax(q_m K^T /
    sqrt(d)) V``, and the attended representation is normalized, ``r_m = LayerNorm(t_m + W_o
    a_m)``. ``fused = head([r_1, ..., r_k])``, one Linear from ``k d`` to the outputs.
    """

    Settings = HiddenSettings

    def __init__(self, modalities: list[str], feature_dims: dict[str, int], num_outputs: int,
                 settings: Any = None) -> None:
        super().__init__(modalities, feature_dims, num_outputs, settings)
        d = self.token_dim = self.settings.width(self.feature_dims)
        self.project = nn.ModuleDict({m: make_linear(self.feature_dims[m], d) for m in self.modalities})
        self.query, self.key, self.value, self.out = (make_linear(d, d) for _ in range(4))
        self.norm = nn.LayerNorm(d)
        self.head = make_linear(len(self.modalities) * d, num_outputs)

    def tokens(self, features: dict[str, Tensor]) -> Tensor:
        """One token per modality, ``[N, k, d]``."""
        return torch.stack([self.project[m](features[m]) for m in self.modalities], dim=1)

    def attend(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Refined tokens ``[N, k, d]`` and attention weights ``[N, k, k]`` (row m: what m attends to)."""
        scores = self.query(tokens) @ self.key(tokens).transpose(1, 2) / self.token_dim**0.5
        weights = scores.softmax(dim=-1)
        return self.norm(tokens + self.out(weights @ self.value(tokens))), weights

    def fuse(self, features: dict[str, Tensor]) -> Tensor:
        refined, _ = self.attend(self.tokens(features))
        return self.head(refined.flatten(1))


def fusion_settings(name: str, values: dict[str, Any]) -> Any:
    """``model.fusion_settings`` checked against the ``Settings`` of the fusion registered as ``name``."""
    return parse_settings(FUSIONS[name].Settings, dict(values), "model.fusion_settings",
                          f"a setting of fusion {name}")


def build_fusion(name: str, modalities: list[str], feature_dims: dict[str, int], num_outputs: int,
                 settings: dict[str, Any] | None = None) -> Fusion:
    """Build the fusion registered as ``name`` (the ``model.fusion`` setting) with its ``model.fusion_settings``."""
    return FUSIONS[name](list(modalities), dict(feature_dims), num_outputs, fusion_settings(name, settings or {}))
