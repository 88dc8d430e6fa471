"""Sequence Transformer and MobileNetV2 encoders: masks, padding invariance, architecture, config checks, a tiny run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from g2d.config import EncoderConfig, load_config
from g2d.data.base import ModalitySpec, MultimodalData, mask_key
from g2d.errors import G2DError
from g2d.models import (
    MobileNetV2Encoder,
    ResNet18Encoder,
    SequenceTransformer,
    build_encoder,
)
from g2d.models.encoders import InvertedResidual
from g2d.runs.experiment import run

KEY = "model.encoders.text.name"


def small_transformer(**overrides) -> SequenceTransformer:
    settings = dict(d_model=16, layers=2, heads=4, feedforward=32)
    settings.update(overrides)
    torch.manual_seed(0)
    return SequenceTransformer(4, **settings).eval()


def lengths_mask(lengths: list[int], steps: int) -> torch.Tensor:
    return torch.arange(steps).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


def test_transformer_output_shape_and_auto() -> None:
    encoder = small_transformer()
    assert encoder.out_dim == 16
    assert encoder(torch.randn(3, 7, 4), lengths_mask([7, 2, 5], 7)).shape == (3, 16)
    config = EncoderConfig(d_model=16, layers=3, heads=2, feedforward=24)
    built = build_encoder(config, ModalitySpec("sequence", (7, 4)), KEY)
    assert isinstance(built, SequenceTransformer)
    assert len(built.transformer.layers) == 3
    assert built.transformer.layers[0].self_attn.num_heads == 2
    assert built.transformer.layers[0].linear1.out_features == 24
    assert built.projection.in_channels == 4 and built.projection.bias is None


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_transformer_ignores_padding(pooling: str, kernel_size: int) -> None:
    encoder = small_transformer(pooling=pooling, kernel_size=kernel_size)
    lengths = [6, 3, 1]
    mask = lengths_mask(lengths, 6)
    x = torch.randn(3, 6, 4)
    expected = encoder(x, mask)
    junk = x.clone()
    junk[~mask] = 100 * torch.randn(int((~mask).sum()), 4)
    torch.testing.assert_close(encoder(junk, mask), expected)
    longer = torch.cat([junk, 50 * torch.randn(3, 4, 4)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(encoder(longer, longer_mask), expected)
    # Each row equals the same sequence encoded alone, unpadded, and padded at the front instead.
    for row, length in enumerate(lengths):
        torch.testing.assert_close(encoder(x[row : row + 1, :length])[0], expected[row])
        front = torch.cat([torch.randn(1, 6 - length, 4), x[row : row + 1, :length]], dim=1)
        front_mask = torch.arange(6).unsqueeze(0) >= 6 - length
        torch.testing.assert_close(encoder(front, front_mask)[0], expected[row])


def test_transformer_mask_none_equals_all_real() -> None:
    encoder = small_transformer()
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(encoder(x, None), encoder(x, torch.ones(2, 5, dtype=torch.bool)))


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_transformer_row_without_real_steps_is_zero_and_finite(pooling: str) -> None:
    encoder = small_transformer(pooling=pooling).train()
    x = torch.randn(3, 5, 4, requires_grad=True)
    mask = lengths_mask([5, 0, 2], 5)
    out = encoder(x, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros(16))
    out.square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)
    assert torch.isfinite(x.grad).all()
    encoder.eval()
    evaluated = encoder(x.detach(), mask)
    assert torch.equal(evaluated[1], torch.zeros(16))
    torch.testing.assert_close(evaluated[[0, 2]], encoder(x[[0, 2]].detach(), mask[[0, 2]]))


def test_attention_never_sees_a_row_with_every_key_masked() -> None:
    """Fully masked attention rows are NaN on some backends, so an empty row must reach attention unmasked."""
    encoder = small_transformer()
    seen = []
    encoder.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["src_key_padding_mask"]), with_kwargs=True
    )
    encoder(torch.randn(3, 4, 4), lengths_mask([4, 0, 2], 4))
    assert torch.equal(seen[0], ~lengths_mask([4, 4, 2], 4))


def test_transformer_gradient_reaches_projection_but_not_padding() -> None:
    encoder = small_transformer().train()
    x = torch.randn(2, 4, 4, requires_grad=True)
    mask = lengths_mask([4, 2], 4)
    encoder(x, mask).square().sum().backward()
    grad = encoder.projection.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.equal(x.grad[~mask], torch.zeros(2, 4))
    assert (x.grad[mask].abs().sum(dim=-1) > 0).all()


def test_sinusoidal_encoding_values_and_order_sensitivity() -> None:
    encoder = SequenceTransformer(4, d_model=4, layers=1, heads=1, feedforward=8)
    encoding = encoder.positional_encoding(torch.tensor([[0, 1]]))
    # inverse frequencies for d_model 4 are 10000^0 = 1 and 10000^(-1/2) = 0.01
    expected = torch.tensor([[[0.0, 1.0, 0.0, 1.0], [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)]]])
    torch.testing.assert_close(encoding, expected)
    x = torch.randn(1, 5, 4)
    reversed_x = x.flip(1)
    with_positions = small_transformer()
    assert not torch.allclose(with_positions(x), with_positions(reversed_x), atol=1e-4)
    # Without positions, kernel-1 projection and mean pooling, the encoder is a set function.
    bag = small_transformer(positional="none")
    torch.testing.assert_close(bag(x), bag(reversed_x))


def test_mobilenetv2_trunk_matches_the_reference_architecture() -> None:
    encoder = MobileNetV2Encoder(3, width_mult=1.0)
    # torchvision's mobilenet_v2().features has 2,223,872 parameters.
    assert sum(p.numel() for p in encoder.parameters()) == 2_223_872
    assert encoder.out_dim == 1280
    blocks = [m for m in encoder.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 17
    assert sum(b.residual for b in blocks) == 10  # the repeated blocks of each stage past the first
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 52
    assert convs[0].in_channels == 3 and convs[0].stride == (2, 2) and convs[-1].out_channels == 1280
    for module in encoder.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


def test_mobilenetv2_width_one_channel_and_video() -> None:
    half = MobileNetV2Encoder(1, width_mult=0.5)
    convs = [m for m in half.modules() if isinstance(m, nn.Conv2d)]
    # stem 32 * 0.5 = 16, first stage 16 * 0.5 = 8, last stage 320 * 0.5 = 160, head stays 1280
    assert convs[0].in_channels == 1 and convs[0].out_channels == 16
    assert convs[2].out_channels == 8 and convs[-2].out_channels == 160
    assert half.out_dim == 1280 and MobileNetV2Encoder(3, width_mult=1.5).out_dim == 1920
    assert half(torch.randn(2, 1, 32, 32)).shape == (2, 1280)
    small = MobileNetV2Encoder(3, width_mult=0.25).eval()
    video = torch.randn(2, 3, 3, 32, 32)
    per_frame = torch.stack([small(video[:, t]) for t in range(3)]).mean(dim=0)
    torch.testing.assert_close(small(video), per_frame)
    built = build_encoder(EncoderConfig(name="mobilenetv2", width_mult=0.25), ModalitySpec("video", (3, 1, 32, 32)), KEY)
    assert isinstance(built, MobileNetV2Encoder) and built(torch.randn(2, 3, 1, 32, 32)).shape == (2, 1280)


def test_auto_choices() -> None:
    assert isinstance(build_encoder(EncoderConfig(width=4), ModalitySpec("image", (1, 16, 16)), KEY), ResNet18Encoder)
    sequence = build_encoder(EncoderConfig(d_model=8, heads=2), ModalitySpec("sequence", (3, 2)), KEY)
    assert isinstance(sequence, SequenceTransformer)


@pytest.mark.parametrize(
    ("config", "spec", "match"),
    [
        (EncoderConfig(name="vit"), ModalitySpec("image", (1, 8, 8)), "config key model.encoders.text.name: unknown encoder 'vit' .available: auto, mlp, resnet18, mobilenetv2, transformer"),
        (EncoderConfig(name="transformer"), ModalitySpec("image", (1, 8, 8)), "model.encoders.text.name: encoder 'transformer' takes sequence input"),
        (EncoderConfig(name="mobilenetv2"), ModalitySpec("sequence", (5, 3)), "model.encoders.text.name: encoder 'mobilenetv2' takes image or video input"),
        (EncoderConfig(name="mlp"), ModalitySpec("sequence", (5, 3)), "model.encoders.text.name: encoder 'mlp' takes vector input"),
        (EncoderConfig(d_model=10, heads=4), ModalitySpec("sequence", (5, 3)), "model.encoders.text.heads: d_model 10 is not divisible by heads 4"),
        (EncoderConfig(heads=0), ModalitySpec("sequence", (5, 3)), "model.encoders.text.heads: must be >= 1"),
        (EncoderConfig(kernel_size=0), ModalitySpec("sequence", (5, 3)), "model.encoders.text.kernel_size"),
        (EncoderConfig(layers=0), ModalitySpec("sequence", (5, 3)), "model.encoders.text.layers"),
        (EncoderConfig(dropout=1.0), ModalitySpec("sequence", (5, 3)), "model.encoders.text.dropout"),
        (EncoderConfig(pooling="max"), ModalitySpec("sequence", (5, 3)), "model.encoders.text.pooling: unknown 'max'; available: mean, last"),
        (EncoderConfig(positional="rope"), ModalitySpec("sequence", (5, 3)), "model.encoders.text.positional"),
        (EncoderConfig(name="mobilenetv2", width_mult=0.0), ModalitySpec("image", (3, 8, 8)), "model.encoders.text.width_mult"),
        (EncoderConfig(), ModalitySpec("sequence", (5,)), "model.encoders.text.name: a sequence modality needs a shape of rank 2"),
    ],
)
def test_build_encoder_errors_name_the_key(config: EncoderConfig, spec: ModalitySpec, match: str) -> None:
    with pytest.raises(G2DError, match=match.replace("(", r"\(")):
        build_encoder(config, spec, KEY)


def synthetic_sequences(seed: int = 0) -> MultimodalData:
    """Two variable-length sequence modalities and one vector modality; the class shifts every modality."""
    generator = torch.Generator().manual_seed(seed)
    sizes = {"train": 48, "val": 16, "test": 16}
    splits = {}
    for split, size in sizes.items():
        labels = torch.arange(size) % 2
        shift = (2 * labels - 1).float()
        tensors: dict[str, torch.Tensor] = {"label": labels}
        for name, steps, dim in (("words", 6, 4), ("prosody", 5, 3)):
            lengths = torch.randint(1, steps + 1, (size,), generator=generator)
            mask = torch.arange(steps).unsqueeze(0) < lengths.unsqueeze(1)
            values = torch.randn(size, steps, dim, generator=generator) + shift[:, None, None]
            tensors[name] = torch.where(mask.unsqueeze(-1), values, torch.full_like(values, 1e3))
            tensors[mask_key(name)] = mask
        tensors["gesture"] = torch.randn(size, 5, generator=generator) + 0.5 * shift[:, None]
        splits[split] = tensors
    modalities = {
        "words": ModalitySpec("sequence", (6, 4)),
        "prosody": ModalitySpec("sequence", (5, 3)),
        "gesture": ModalitySpec("vector", (5,)),
    }
    return MultimodalData("synthetic_sequences", "classification", 2, modalities, splits, class_names=["no", "yes"])


def test_tiny_g2d_run_with_sequence_modalities(tmp_path) -> None:
    config = load_config(None, [
        "method.name=g2d", "smp.enabled=true", "smp.tau=[1,1]",
        "model.encoder.d_model=16", "model.encoder.layers=1", "model.encoder.heads=2",
        "model.encoder.feedforward=32", "model.encoder.hidden=[16]",
        "trainer.epochs=3", "trainer.batch_size=16", "trainer.progress=false", "optim.lr=0.05",
        f"out={tmp_path / 'run'}", f"teachers.root={tmp_path / 'teachers'}",
    ])
    metrics = run(config, data=synthetic_sequences())
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["modalities"] == ["words", "prosody", "gesture"] and written["method"] == "g2d"
    assert written["smp"]["enabled"] is True
    assert set(written["test"]["per_modality"]) == {"words", "prosody", "gesture"}
    assert set(written["teachers"]) == {"words", "prosody", "gesture"}
    for scores in [written["test"]["multimodal"], *written["test"]["per_modality"].values()]:
        assert 0.0 <= scores["accuracy"] <= 1.0
    assert metrics["test"] == written["test"]
    teacher = json.loads((tmp_path / "teachers" / "teacher_words" / "teacher.json").read_text())
    assert teacher["encoder"]["d_model"] == 16 and teacher["input"]["kind"] == "sequence"
