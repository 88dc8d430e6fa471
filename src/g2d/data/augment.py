"""Training-time augmentation of visual modalities, as the references' image and video loaders do it.

Random resized crop (area 8-100 %, aspect ratio 3/4-4/3, back to the stored size) and a horizontal
flip with probability 1/2, applied to the float batch on the training device. Evaluation sees the
stored frames unchanged (they were resized once when the dataset was prepared). Frames of a clip are
augmented independently, as the references' loaders transform each frame on its own.

``dataset.normalize`` standardises the same modalities with ImageNet's channel statistics in training
and evaluation, the references' ``Normalize`` (applied before the crop here, which is the same: a
bilinear crop commutes with a per-channel affine map).

Plain torch (``affine_grid`` + ``grid_sample``): the parameters come from a ``torch.Generator`` of
its own, seeded from the run's seed, the epoch and the step, so the global RNG streams are untouched
and a resumed run draws the same crops as an uninterrupted one.
"""

from __future__ import annotations

import math

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from g2d.data.base import ModalitySpec, MultimodalData
from g2d.errors import G2DError

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
# ImageNet's per-channel statistics of RGB in [0, 1], which the references' loaders normalise frames with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def augmentable(spec: ModalitySpec) -> bool:
    """Video, and images of 3 channels (photographs, frames); 1-channel images (spectrograms, digits) are not."""
    return spec.kind == "video" or (spec.kind == "image" and spec.shape[0] == 3)


def check_augmentable(data: MultimodalData, key: str) -> None:
    """``key`` (``dataset.augment`` or ``dataset.normalize``) needs a video or a 3-channel image modality."""
    if not any(augmentable(spec) for spec in data.modalities.values()):
        kinds = ", ".join(f"{m} ({spec.kind} {list(spec.shape)})" for m, spec in data.modalities.items())
        raise G2DError(f"config key {key}: {data.name} has no video or 3-channel image modality to transform ({kinds})")


def normalize_visual(data: MultimodalData) -> MultimodalData:
    """``data`` with its video and 3-channel image modalities standardised by ImageNet's channel statistics."""
    check_augmentable(data, "dataset.normalize")
    specs = {m: dataclasses.replace(spec, mean=IMAGENET_MEAN, std=IMAGENET_STD) if augmentable(spec) else spec
             for m, spec in data.modalities.items()}
    return dataclasses.replace(data, modalities=specs)


def crop_and_flip(images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Random resized crop and horizontal flip of ``images [N, C, H, W]``, resampled to ``H x W``.

    ``draws [N, 5]`` are uniform in [0, 1): area, log aspect ratio, horizontal and vertical position, flip.
    A crop wider or taller than the image is clipped to it (torchvision retries instead).
    """
    n, _, height, width = images.shape
    area = SCALE[0] + (SCALE[1] - SCALE[0]) * draws[:, 0]
    ratio = torch.exp(math.log(RATIO[0]) + (math.log(RATIO[1]) - math.log(RATIO[0])) * draws[:, 1])
    crop_w = torch.sqrt(area * ratio * height / width).clamp(max=1.0)  # fractions of the width and height
    crop_h = torch.sqrt(area / ratio * width / height).clamp(max=1.0)
    centre_x = (crop_w + (1 - crop_w) * 2 * draws[:, 2]) - 1  # in [-1 + w, 1 - w], the grid's coordinates
    centre_y = (crop_h + (1 - crop_h) * 2 * draws[:, 3]) - 1
    flip = torch.where(draws[:, 4] < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = (crop_w * flip).to(images)
    theta[:, 0, 2] = centre_x.to(images)
    theta[:, 1, 1] = crop_h.to(images)
    theta[:, 1, 2] = centre_y.to(images)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Augmenter:
    """Augments the visual modalities of a training batch; ``(epoch, step)`` and the seed fix every draw."""

    def __init__(self, modalities: dict[str, ModalitySpec], seed: int) -> None:
        self.modalities = [m for m, spec in modalities.items() if augmentable(spec)]
        self.seed = seed

    def __call__(self, inputs: dict[str, torch.Tensor], epoch: int, step: int) -> dict[str, torch.Tensor]:
        # The CPU generator keeps 32 bits of a seed: SeedSequence mixes all three numbers into them.
        state = np.random.SeedSequence([self.seed % 2**32, epoch, step]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(state))
        out = dict(inputs)
        for modality in self.modalities:
            x = inputs[modality]
            frames = x.flatten(0, 1) if x.dim() == 5 else x  # video: each frame on its own
            draws = torch.rand(frames.shape[0], 5, generator=generator).to(frames.device, non_blocking=True)
            out[modality] = crop_and_flip(frames, draws).view_as(x)
        return out
