"""The multimodal model: one encoder per modality feeding a fusion module."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from g2d.config import ModelConfig
from g2d.data.base import ModalitySpec, mask_key
from g2d.errors import G2DError
from g2d.models.encoders import build_encoder
from g2d.models.fusion import build_fusion


@dataclass
class ModelOutput:
    """Encoder features ``[B, d_m]``, fused logits ``[B, K]`` and per-modality logits ``[B, K]``."""

    features: dict[str, Tensor]
    logits: Tensor
    modality_logits: dict[str, Tensor]


def check_modality_names(names: list[str]) -> None:
    """Reject names that cannot key an ``nn.ModuleDict``, so the error names the setting, not torch internals."""
    if len(names) == 0:
        raise G2DError("dataset.modalities: a model needs at least one modality")
    reserved = nn.ModuleDict()
    for name in names:
        if not isinstance(name, str) or name == "" or "." in name:
            raise G2DError(f"dataset.modalities: modality name {name!r} must be a non-empty string without '.'")
        if hasattr(reserved, name):
            raise G2DError(f"dataset.modalities: modality name {name!r} clashes with a torch.nn.ModuleDict attribute")


class MultimodalModel(nn.Module):
    """Encoders per modality plus a fusion; a single modality with late fusion is a unimodal teacher."""

    def __init__(self, modalities: dict[str, ModalitySpec], config: ModelConfig, num_outputs: int) -> None:
        super().__init__()
        self.modalities: list[str] = list(modalities)
        check_modality_names(self.modalities)
        encoders = {}
        for m, spec in modalities.items():
            key = f"model.encoders.{m}.name" if m in config.encoders else "model.encoder.name"
            encoders[m] = build_encoder(config.encoder_for(m), spec, key=key)
        self.encoders = nn.ModuleDict(encoders)
        # Frozen (pretrained) encoders stay in eval mode, so BatchNorm statistics and dropout
        # do not change them either; ``lr_scales`` give the others their own learning rate.
        self.frozen = [m for m in self.modalities if config.encoder_for(m).freeze]
        self.lr_scales = {m: float(config.encoder_for(m).lr_scale) for m in self.modalities}
        feature_dims = {m: int(encoders[m].out_dim) for m in self.modalities}
        self.fusion = build_fusion(config.fusion, self.modalities, feature_dims, num_outputs,
                                   config.fusion_settings)
        self.num_outputs = num_outputs
        # Trainable modules a method adds (e.g. MLA's shared head) live here, so the optimizer,
        # checkpoints and device moves include them without special cases.
        self.method_modules: nn.Module | None = None

    def train(self, mode: bool = True) -> "MultimodalModel":
        super().train(mode)
        for modality in self.frozen:
            self.encoders[modality].eval()
        return self

    @property
    def feature_dims(self) -> dict[str, int]:
        return dict(self.fusion.feature_dims)

    def forward(self, inputs: dict[str, Tensor]) -> ModelOutput:
        features = {m: self.encoders[m](inputs[m], inputs.get(mask_key(m))) for m in self.modalities}
        logits, modality_logits = self.fusion(features)
        return ModelOutput(features=features, logits=logits, modality_logits=modality_logits)

    def encoder_parameters(self, modality: str) -> list[nn.Parameter]:
        """The parameters of ``modality``'s encoder, for per-modality gradient modulation."""
        if modality not in self.encoders:
            raise G2DError(f"unknown modality {modality!r}; model has {', '.join(self.modalities)}")
        return list(self.encoders[modality].parameters())
