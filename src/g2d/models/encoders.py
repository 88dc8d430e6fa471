"""Unimodal encoders: MLP (vectors), ResNet-18 and MobileNetV2 (images, video), Transformer (sequences),
and Hugging Face models from a local folder (``g2d.models.hf``).

Every encoder maps one modality's batch to features ``[B, out_dim]`` and exposes ``out_dim``
so the fusion module can size its heads. ``forward(x, mask=None)`` is the one signature:
``mask`` is the padding mask of a sequence modality (True = real step) and ``None`` otherwise.
All but ``hf`` are written here (no torchvision) and initialised as the paper does
(``init_weights``); any of them may then start from a weights file (``g2d.models.pretrained``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from g2d.config import EncoderConfig
from g2d.data.base import ModalitySpec
from g2d.errors import G2DError
from g2d.models.hf import HF_KINDS, build_hf
from g2d.models.pretrained import apply_pretrained
from g2d.registry import Registry


def init_weights(module: nn.Module) -> None:
    """Initialise as the paper does: Kaiming conv, unit BatchNorm, Xavier Linear with zero bias."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.Linear):
            nn.init.xavier_normal_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def pool_image_features(trunk: Callable[[Tensor], Tensor], x: Tensor, name: str) -> Tensor:
    """Average a 2D trunk's feature maps over space (images) or over frames and space (video).

    Video ``[B, T, C, H, W]`` has its frames folded into the batch for the 2D trunk, as in the
    OGM-GE and G²D code, so every frame goes through the same weights.
    """
    if x.dim() == 4:
        return trunk(x).mean(dim=(2, 3))
    if x.dim() == 5:
        batch, frames = x.shape[0], x.shape[1]
        maps = trunk(x.flatten(0, 1))
        maps = maps.view(batch, frames, *maps.shape[1:])
        return maps.mean(dim=(1, 3, 4))
    raise G2DError(f"{name} expects [B, C, H, W] or [B, T, C, H, W] input, got shape {tuple(x.shape)}")


class MLPEncoder(nn.Module):
    """Linear -> ReLU (-> Dropout) per hidden size, for feature-vector modalities ``[B, d]``."""

    def __init__(self, in_dim: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_dim
        for size in hidden:
            layers.append(nn.Linear(previous, size))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            previous = size
        self.net = nn.Sequential(*layers)
        self.out_dim = int(hidden[-1])
        init_weights(self)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.net(x)


class BasicBlock(nn.Module):
    """The ResNet-18 residual block: two 3x3 convs, with a 1x1 conv shortcut when the shape changes."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ResNet18Encoder(nn.Module):
    """The ResNet-18 trunk without its classifier, pooled over time and space to ``[B, 8 * width]``.

    Images are ``[B, C, H, W]``; video ``[B, T, C, H, W]`` is pooled over frames too
    (``pool_image_features``).
    """

    def __init__(self, in_channels: int, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(width, width, stride=1)
        self.layer2 = self._stage(width, 2 * width, stride=2)
        self.layer3 = self._stage(2 * width, 4 * width, stride=2)
        self.layer4 = self._stage(4 * width, 8 * width, stride=2)
        self.out_dim = 8 * width
        init_weights(self)

    @staticmethod
    def _stage(in_channels: int, channels: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(in_channels, channels, stride), BasicBlock(channels, channels, 1))

    def trunk(self, x: Tensor) -> Tensor:
        """Feature maps ``[N, 8 * width, h, w]`` for a batch of 2D inputs ``[N, C, H, W]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return pool_image_features(self.trunk, x, "ResNet18Encoder")




def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of ``divisor``, never more than 10% below ``value``.

    This is the MobileNet papers' rounding, so width multipliers give the published channel counts.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_bn_relu6(in_channels: int, channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Convolution (no bias, 'same' padding for odd kernels) -> BatchNorm -> ReLU6, MobileNetV2's basic unit."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion -> 3x3 depthwise -> linear 1x1 projection, with an identity shortcut when shapes match."""

    def __init__(self, in_channels: int, channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_relu6(in_channels, hidden, 1))
        layers.append(conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden))
        # The projection stays linear: a ReLU on the narrow bottleneck would destroy information.
        layers.append(nn.Conv2d(hidden, channels, 1, bias=False))
        layers.append(nn.BatchNorm2d(channels))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.residual else out


# MobileNetV2's body (Sandler et al. 2018, Table 2): expansion t, output channels c, blocks n,
# stride s of the first block of the stage.
MOBILENETV2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2Encoder(nn.Module):
    """The MobileNetV2 trunk (MIS-ME's image encoder) without its classifier, pooled to ``[B, out_dim]``.

    A stride-2 3x3 stem of 32 channels, the inverted-residual stages of ``MOBILENETV2_STAGES``
    and a 1x1 conv to 1280 channels, all scaled by ``width_mult`` (the last conv only upwards,
    as in the paper). Images ``[B, C, H, W]`` and video ``[B, T, C, H, W]`` as for ResNet-18.
    """

    def __init__(self, in_channels: int, width_mult: float = 1.0) -> None:
        super().__init__()
        channels = make_divisible(32 * width_mult)
        layers: list[nn.Module] = [conv_bn_relu6(in_channels, channels, 3, stride=2)]
        for expansion, stage_channels, blocks, stride in MOBILENETV2_STAGES:
            out_channels = make_divisible(stage_channels * width_mult)
            for index in range(blocks):
                layers.append(InvertedResidual(channels, out_channels, stride if index == 0 else 1, expansion))
                channels = out_channels
        self.out_dim = make_divisible(1280 * max(1.0, width_mult))
        layers.append(conv_bn_relu6(channels, self.out_dim, 1))
        self.features = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return pool_image_features(self.features, x, "MobileNetV2Encoder")


POSITIONAL_ENCODINGS = ("sinusoidal", "none")
POOLINGS = ("mean", "last")


class SequenceTransformer(nn.Module):
    """Conv1d projection to ``d_model``, positional encoding, a TransformerEncoder, masked pooling.

    The paper's UR-Funny encoder (after AGM / MultiBench): input ``[B, T, d]`` with a padding
    mask ``[B, T]`` (True = real step; ``None`` = all real). Padded steps are zeroed before the
    projection (so a kernel wider than 1 never carries them into real steps), excluded as
    attention keys and left out of the pooling, so the features depend on the real steps only.
    The sinusoidal encoding uses each step's index among the real steps, so where the padding
    sits (front or back) and how much there is does not matter. A row with no real step
    encodes to the zero vector.
    """

    def __init__(
        self,
        in_dim: int,
        d_model: int = 768,
        layers: int = 4,
        heads: int = 8,
        feedforward: int = 2048,
        dropout: float = 0.0,
        kernel_size: int = 1,
        positional: str = "sinusoidal",
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        self.projection = nn.Conv1d(in_dim, d_model, kernel_size, padding="same", bias=False)
        layer = nn.TransformerEncoderLayer(d_model, heads, feedforward, dropout, batch_first=True)
        # No nested-tensor fast path: training and evaluation then run the same computation.
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.positional = positional
        self.pooling = pooling
        self.register_buffer("inverse_frequency", 10000.0 ** (-torch.arange(0, d_model, 2) / d_model), persistent=False)
        self.out_dim = d_model
        init_weights(self)

    def positional_encoding(self, positions: Tensor) -> Tensor:
        """Vaswani et al.'s encoding ``[B, T, d_model]``: sin on even, cos on odd channels."""
        angles = positions.unsqueeze(-1).float() * self.inverse_frequency
        return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)[..., : self.out_dim]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if x.dim() != 3:
            raise G2DError(f"SequenceTransformer expects [B, T, d] input, got shape {tuple(x.shape)}")
        batch, steps = x.shape[0], x.shape[1]
        real = torch.ones(batch, steps, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        if tuple(real.shape) != (batch, steps):
            raise G2DError(f"SequenceTransformer: mask shape {tuple(real.shape)} does not match input {tuple(x.shape)}")
        x = x.masked_fill(~real.unsqueeze(-1), 0.0)
        hidden = self.projection(x.transpose(1, 2)).transpose(1, 2)
        if self.positional == "sinusoidal":
            positions = (real.cumsum(dim=1) - 1).clamp(min=0)
            hidden = hidden + self.positional_encoding(positions).to(hidden.dtype)
        padding = None
        if mask is not None:
            # A row with no real step would have every attention key masked, and softmax over
            # nothing is NaN; let it attend over its (zeroed) steps and pool it to zero below.
            empty = ~real.any(dim=1, keepdim=True)
            padding = ~real & ~empty
        hidden = self.transformer(hidden, src_key_padding_mask=padding)
        return self.pool(hidden, real)

    def pool(self, hidden: Tensor, real: Tensor) -> Tensor:
        """Mean over real steps, or the last real step; zero for a row without real steps."""
        weights = real.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "mean":
            return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        last = real.shape[1] - 1 - real.flip(1).int().argmax(dim=1)
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return picked * weights.amax(dim=1)


def check_positive(prefix: str, config: EncoderConfig, fields: tuple[str, ...]) -> None:
    for name in fields:
        value = getattr(config, name)
        if not value >= 1:
            raise G2DError(f"{prefix}.{name}: must be >= 1, got {value}")


def check_dropout(prefix: str, dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise G2DError(f"{prefix}.dropout: must be in [0, 1), got {dropout}")


def image_channels(spec: ModalitySpec) -> int:
    return spec.shape[0] if spec.kind == "image" else spec.shape[1]


Builder = Callable[[EncoderConfig, ModalitySpec, str], nn.Module]


@dataclass(frozen=True)
class EncoderRecord:
    """An encoder's facts: ``build(config, spec, prefix)`` makes it (checking the settings it reads from
    ``EncoderConfig``), ``kinds`` are the modality kinds it takes."""

    build: Builder
    kinds: tuple[str, ...]


# ``@ENCODERS.register("name", kinds=(...))`` on the builder: ``model.encoder.name=name`` selects it.
ENCODERS: Registry[EncoderRecord] = Registry("encoder", "model.encoder.name", EncoderRecord)


@ENCODERS.register("auto", kinds=("vector", "image", "video", "sequence"))
def build_auto(config: EncoderConfig, spec: ModalitySpec, key: str) -> nn.Module:
    """``auto``: the paper's encoder for the modality's kind (MLP, ResNet-18 or Transformer)."""
    return ENCODERS[AUTO_ENCODER[spec.kind]].build(config, spec, key)


@ENCODERS.register("mlp", kinds=("vector",))
def build_mlp(config: EncoderConfig, spec: ModalitySpec, prefix: str) -> nn.Module:
    if len(config.hidden) == 0 or min(config.hidden) < 1:
        raise G2DError(f"{prefix}.hidden: need at least one positive layer size, got {list(config.hidden)}")
    check_dropout(prefix, config.dropout)
    return MLPEncoder(spec.shape[0], list(config.hidden), config.dropout)


@ENCODERS.register("resnet18", kinds=("image", "video"))
def build_resnet18(config: EncoderConfig, spec: ModalitySpec, prefix: str) -> nn.Module:
    check_positive(prefix, config, ("width",))
    return ResNet18Encoder(image_channels(spec), config.width)


@ENCODERS.register("mobilenetv2", kinds=("image", "video"))
def build_mobilenetv2(config: EncoderConfig, spec: ModalitySpec, prefix: str) -> nn.Module:
    if not (math.isfinite(config.width_mult) and config.width_mult > 0):
        raise G2DError(f"{prefix}.width_mult: must be a positive number, got {config.width_mult}")
    return MobileNetV2Encoder(image_channels(spec), config.width_mult)


@ENCODERS.register("transformer", kinds=("sequence",))
def build_transformer(config: EncoderConfig, spec: ModalitySpec, prefix: str) -> nn.Module:
    check_positive(prefix, config, ("d_model", "layers", "heads", "feedforward", "kernel_size"))
    if config.d_model % config.heads != 0:
        raise G2DError(f"{prefix}.heads: d_model {config.d_model} is not divisible by heads {config.heads}")
    check_dropout(prefix, config.dropout)
    if config.positional not in POSITIONAL_ENCODINGS:
        raise G2DError(f"{prefix}.positional: unknown {config.positional!r}; available: {', '.join(POSITIONAL_ENCODINGS)}")
    if config.pooling not in POOLINGS:
        raise G2DError(f"{prefix}.pooling: unknown {config.pooling!r}; available: {', '.join(POOLINGS)}")
    return SequenceTransformer(
        spec.shape[1],
        d_model=config.d_model,
        layers=config.layers,
        heads=config.heads,
        feedforward=config.feedforward,
        dropout=config.dropout,
        kernel_size=config.kernel_size,
        positional=config.positional,
        pooling=config.pooling,
    )


# hf's builder is defined in g2d.models.hf, a module this one imports (so it cannot import this registry).
ENCODERS.register("hf", kinds=HF_KINDS)(build_hf)
ENCODER_NAMES = tuple(ENCODERS)
AUTO_ENCODER = {"vector": "mlp", "image": "resnet18", "video": "resnet18", "sequence": "transformer"}
SPEC_RANK = {"vector": 1, "image": 3, "video": 4, "sequence": 2, "tokens": 1}


def build_encoder(config: EncoderConfig, spec: ModalitySpec, key: str) -> nn.Module:
    """Build the encoder ``config`` names for a modality shaped like ``spec``; ``key`` is the config key for errors."""
    if spec.kind not in SPEC_RANK:
        raise G2DError(f"{key}: modality kind {spec.kind!r} is not one of {', '.join(SPEC_RANK)}")
    if len(spec.shape) != SPEC_RANK[spec.kind]:
        raise G2DError(f"{key}: a {spec.kind} modality needs a shape of rank {SPEC_RANK[spec.kind]}, got {spec.shape}")
    encoder = ENCODERS.lookup(config.name, key)
    if spec.kind not in encoder.kinds:
        if config.name == "auto":
            raise G2DError(f"{key}: a {spec.kind} modality has no automatic encoder; use hf with a model folder as path")
        raise G2DError(f"{key}: encoder {config.name!r} takes {' or '.join(encoder.kinds)} input, but this modality is {spec.kind} {spec.shape}")
    prefix = key.rsplit(".", 1)[0]
    if config.path and config.name != "hf":
        raise G2DError(f"{prefix}.path: only the hf encoder reads a model folder (this one is {config.name!r}); "
                       f"for a weights file use {prefix}.weights")
    return apply_pretrained(encoder.build(config, spec, prefix), config, prefix)
