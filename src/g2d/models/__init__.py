"""Encoders, fusion modules and the multimodal model."""

from g2d.models.encoders import (
    ENCODER_NAMES,
    MLPEncoder,
    MobileNetV2Encoder,
    ResNet18Encoder,
    SequenceTransformer,
    build_encoder,
)
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
    "ENCODER_NAMES",
    "FUSIONS",
    "ConcatFusion",
    "CrossAttentionFusion",
    "DeactivationFusion",
    "FiLMFusion",
    "Fusion",
    "GatedFusion",
    "LateFusion",
    "MLPEncoder",
    "MobileNetV2Encoder",
    "ModelOutput",
    "MultimodalModel",
    "ResNet18Encoder",
    "SequenceTransformer",
    "SumFusion",
    "build_encoder",
    "build_fusion",
]
