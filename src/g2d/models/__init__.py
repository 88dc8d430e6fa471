"""Encoders, fusion modules and the multimodal model."""

from g2d.models.encoders import MLPEncoder, ResNet18Encoder, build_encoder
from g2d.models.fusion import (
    FUSIONS,
    ConcatFusion,
    CrossAttentionFusion,
    DeactivationFusion,
    FiLMFusion,
    Fusion,
    GatedFusion,
    LateFusion,
    SumFusion,
    build_fusion,
)
from g2d.models.multimodal import ModelOutput, MultimodalModel

__all__ = [
    "FUSIONS",
    "ConcatFusion",
    "CrossAttentionFusion",
    "DeactivationFusion",
    "FiLMFusion",
    "Fusion",
    "GatedFusion",
    "LateFusion",
    "MLPEncoder",
    "ModelOutput",
    "MultimodalModel",
    "ResNet18Encoder",
    "SumFusion",
    "build_encoder",
    "build_fusion",
]
