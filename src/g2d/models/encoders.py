"""Unimodal encoders: an MLP for feature vectors and a ResNet-18 trunk for images and video.

Every encoder maps one modality's batch to features ``[B, out_dim]`` and exposes ``out_dim``
so the fusion module can size its heads. ``forward(x, mask=None)`` is the one signature:
``mask`` is the padding mask of a sequence modality (True = real step) and ``None`` otherwise.
"""

from __future__ import annotations

from torch import Tensor, nn

from g2d.config import EncoderConfig
from g2d.data.base import ModalitySpec
from g2d.errors import G2DError

ENCODER_NAMES = ("auto", "mlp", "resnet18")


def init_weights(module: nn.Module) -> None:
    """Initialise as the paper does: Kaiming conv, unit BatchNorm, Xavier Linear with zero bias."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
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

    Images are ``[B, C, H, W]``; video ``[B, T, C, H, W]`` has its frames folded into the
    batch for the 2D trunk and the feature maps averaged over T, H and W, as in the
    OGM-GE and G²D code.
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
        if x.dim() == 4:
            return self.trunk(x).mean(dim=(2, 3))
        if x.dim() == 5:
            batch, frames = x.shape[0], x.shape[1]
            maps = self.trunk(x.flatten(0, 1))
            maps = maps.view(batch, frames, *maps.shape[1:])
            return maps.mean(dim=(1, 3, 4))
        raise G2DError(f"ResNet18Encoder expects [B, C, H, W] or [B, T, C, H, W] input, got shape {tuple(x.shape)}")


def build_encoder(config: EncoderConfig, spec: ModalitySpec, key: str) -> nn.Module:
    """Build the encoder ``config`` names for a modality shaped like ``spec``; ``key`` is the config key for errors."""
    prefix = key.rsplit(".", 1)[0]
    expected_rank = {"vector": 1, "image": 3, "video": 4}
    if spec.kind not in expected_rank:
        raise G2DError(f"{key}: modality kind {spec.kind!r} is not one of {', '.join(expected_rank)}")
    if len(spec.shape) != expected_rank[spec.kind]:
        raise G2DError(f"{key}: a {spec.kind} modality needs a shape of rank {expected_rank[spec.kind]}, got {spec.shape}")
    name = config.name
    if name not in ENCODER_NAMES:
        raise G2DError(f"{key}: unknown encoder {name!r}; available: {', '.join(ENCODER_NAMES)}")
    if name == "auto":
        name = "mlp" if spec.kind == "vector" else "resnet18"
    if name == "mlp":
        if spec.kind != "vector":
            raise G2DError(f"{key}: encoder 'mlp' takes vector input, but this modality is {spec.kind} {spec.shape}")
        if len(config.hidden) == 0 or min(config.hidden) < 1:
            raise G2DError(f"{prefix}.hidden: need at least one positive layer size, got {list(config.hidden)}")
        if not 0.0 <= config.dropout < 1.0:
            raise G2DError(f"{prefix}.dropout: must be in [0, 1), got {config.dropout}")
        return MLPEncoder(spec.shape[0], list(config.hidden), config.dropout)
    if spec.kind == "vector":
        raise G2DError(f"{key}: encoder 'resnet18' takes image or video input, but this modality is a vector {spec.shape}")
    if config.width < 1:
        raise G2DError(f"{prefix}.width: must be >= 1, got {config.width}")
    in_channels = spec.shape[0] if spec.kind == "image" else spec.shape[1]
    return ResNet18Encoder(in_channels, config.width)
