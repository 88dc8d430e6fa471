"""Encoders, fusion modules and the multimodal model: shapes, init, logit identities, errors, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from g2d.config import EncoderConfig, ModelConfig
from g2d.data.base import ModalitySpec
from g2d.errors import G2DError
from g2d.models import (
    FUSIONS,
    MLPEncoder,
    MultimodalModel,
    ResNet18Encoder,
    build_encoder,
    build_fusion,
)

WIDTH = 8


def small_config(fusion: str = "late") -> ModelConfig:
    return ModelConfig(fusion=fusion, encoder=EncoderConfig(width=WIDTH, hidden=[16, 12]))


def test_mlp_shape_and_dropout() -> None:
    encoder = MLPEncoder(10, [16, 12], dropout=0.5)
    assert encoder.out_dim == 12
    assert sum(isinstance(m, nn.Dropout) for m in encoder.modules()) == 2
    assert encoder(torch.randn(4, 10)).shape == (4, 12)
    assert not any(isinstance(m, nn.Dropout) for m in MLPEncoder(10, [16], dropout=0.0).modules())


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 1, 112, 112), (2, 3, 3, 32, 32)])
def test_resnet_shapes(shape: tuple[int, ...]) -> None:
    channels = shape[1] if len(shape) == 4 else shape[2]
    encoder = ResNet18Encoder(channels, width=WIDTH)
    assert encoder.out_dim == 8 * WIDTH
    assert encoder(torch.randn(*shape)).shape == (2, 8 * WIDTH)


def test_resnet_video_averages_frames() -> None:
    encoder = ResNet18Encoder(3, width=WIDTH).eval()
    video = torch.randn(2, 3, 3, 32, 32)
    per_frame = torch.stack([encoder(video[:, t]) for t in range(3)]).mean(dim=0)
    torch.testing.assert_close(encoder(video), per_frame)


def test_resnet_structure_and_init() -> None:
    encoder = ResNet18Encoder(3, width=64)
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20
    assert sum(c.kernel_size == (1, 1) for c in convs) == 3
    assert sum(p.numel() for p in encoder.parameters()) == 11_176_512
    for module in encoder.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


def test_build_encoder_auto_and_errors() -> None:
    key = "model.encoders.audio.name"
    assert isinstance(build_encoder(EncoderConfig(hidden=[8]), ModalitySpec("vector", (5,)), key), MLPEncoder)
    video = build_encoder(EncoderConfig(width=WIDTH), ModalitySpec("video", (3, 2, 32, 32)), key)
    assert isinstance(video, ResNet18Encoder) and video.conv1.in_channels == 2
    image = build_encoder(EncoderConfig(name="resnet18", width=WIDTH), ModalitySpec("image", (1, 28, 28)), key)
    assert image.conv1.in_channels == 1
    with pytest.raises(G2DError, match=key):
        build_encoder(EncoderConfig(name="vit"), ModalitySpec("image", (1, 28, 28)), key)
    with pytest.raises(G2DError, match=key):
        build_encoder(EncoderConfig(name="mlp"), ModalitySpec("image", (1, 28, 28)), key)
    with pytest.raises(G2DError, match=key):
        build_encoder(EncoderConfig(name="resnet18"), ModalitySpec("vector", (5,)), key)
    with pytest.raises(G2DError, match="model.encoders.audio.hidden"):
        build_encoder(EncoderConfig(hidden=[]), ModalitySpec("vector", (5,)), key)


def make_features(k: int, batch: int = 4) -> tuple[list[str], dict[str, int], dict[str, torch.Tensor]]:
    modalities = [f"m{i}" for i in range(k)]
    dims = {m: 3 + i for i, m in enumerate(modalities)}
    features = {m: torch.randn(batch, dims[m]) for m in modalities}
    return modalities, dims, features


@pytest.mark.parametrize("k", [2, 3])
def test_late_and_sum_fusion(k: int) -> None:
    modalities, dims, features = make_features(k)
    for name, reduce in (("late", torch.mean), ("sum", torch.sum)):
        fusion = build_fusion(name, modalities, dims, 5)
        fused, per_modality = fusion(features)
        assert fused.shape == (4, 5) and set(per_modality) == set(modalities)
        for m in modalities:
            torch.testing.assert_close(per_modality[m], fusion.heads[m](features[m]))
        torch.testing.assert_close(fused, reduce(torch.stack([per_modality[m] for m in modalities]), dim=0))


@pytest.mark.parametrize("k", [2, 3])
def test_concat_fusion_partition(k: int) -> None:
    modalities, dims, features = make_features(k)
    fusion = build_fusion("concat", modalities, dims, 5)
    nn.init.normal_(fusion.head.bias)
    fused, per_modality = fusion(features)
    torch.testing.assert_close(fused, sum(per_modality[m] for m in modalities))
    weight, bias = fusion.head.weight, fusion.head.bias
    start = 0
    for m in modalities:
        manual = features[m] @ weight[:, start : start + dims[m]].T + bias / k
        torch.testing.assert_close(per_modality[m], manual)
        start += dims[m]


def test_fusion_registry_and_unknown_name() -> None:
    assert {"late", "sum", "concat"} <= set(FUSIONS)
    with pytest.raises(G2DError, match=r"model\.fusion.*late"):
        build_fusion("bogus", ["a"], {"a": 3}, 2)


def test_fusion_init() -> None:
    fusion = build_fusion("late", ["a"], {"a": 3}, 2)
    assert torch.all(fusion.heads["a"].bias == 0)


def test_single_modality_late_model() -> None:
    model = MultimodalModel({"audio": ModalitySpec("image", (1, 28, 28))}, small_config(), num_outputs=3)
    out = model({"audio": torch.randn(2, 1, 28, 28), "label": torch.zeros(2, dtype=torch.long)})
    assert out.features["audio"].shape == (2, 8 * WIDTH)
    assert out.logits.shape == (2, 3)
    torch.testing.assert_close(out.logits, out.modality_logits["audio"])


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_gradients_reach_every_encoder(fusion: str) -> None:
    specs = {
        "audio": ModalitySpec("image", (1, 28, 28)),
        "visual": ModalitySpec("video", (2, 3, 32, 32)),
        "text": ModalitySpec("vector", (6,)),
    }
    model = MultimodalModel(specs, small_config(fusion), num_outputs=4)
    assert model.modalities == ["audio", "visual", "text"]
    inputs = {
        "audio": torch.randn(3, 1, 28, 28),
        "visual": torch.randn(3, 2, 3, 32, 32),
        "text": torch.randn(3, 6),
    }
    out = model(inputs)
    assert out.logits.shape == (3, 4)
    out.logits.sum().backward()
    for m in specs:
        params = model.encoder_parameters(m)
        assert params and all(p.grad is not None for p in params)
        assert any(p.grad.abs().sum() > 0 for p in params)


def test_model_errors_name_keys() -> None:
    spec = {"audio": ModalitySpec("image", (1, 28, 28))}
    with pytest.raises(G2DError, match="model.fusion"):
        MultimodalModel(spec, small_config("bogus"), 2)
    config = small_config()
    config.encoders["audio"] = EncoderConfig(name="mlp")
    with pytest.raises(G2DError, match=r"model\.encoders\.audio\.name"):
        MultimodalModel(spec, config, 2)
    with pytest.raises(G2DError, match=r"model\.encoder\.name"):
        MultimodalModel(spec, ModelConfig(encoder=EncoderConfig(name="vit")), 2)
    for bad in ("a.b", "", "type"):
        with pytest.raises(G2DError, match="dataset.modalities"):
            MultimodalModel({bad: ModalitySpec("vector", (3,))}, small_config(), 2)
