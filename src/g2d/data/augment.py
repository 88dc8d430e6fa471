"""Training-time augmentation of visual modalities, as the references' image and video loaders do it.

Random resized crop (area 8-100 %, aspect ratio 3/4-4/3, back to the stored size) and a horizontal
flip with probability 1/2, applied to the float batch on the training device. Evaluation sees the
stored frames unchanged (they were resized once when the dataset was prepared). Frames of a clip are
augmented independently, as the references' loaders transform each frame on its own.

``dataset.normalize`` standardises the same modalities with ImageNet's channel statistics in training
and evaluation, the references' ``Normalize`` (applied before the crop here, which is the same: a
bilinear crop commutes with a per-channel affine map).

The transforms are kornia's (``RandomResizedCrop``, ``RandomHorizontalFlip``): torchvision's
semantics, up to ten draws of area and ratio and a centre crop when none fits, on tensors already on
the device, without torchvision. Kornia draws its parameters from the global CPU generator, so each
call runs inside ``torch.random.fork_rng`` with that generator seeded from the run's seed, the epoch
and the step: the run's own random streams are untouched and a resumed run draws the same crops as an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

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


class Augmenter:
    """Augments the visual modalities of a training batch; ``(epoch, step)`` and the seed fix every draw."""

    def __init__(self, modalities: dict[str, ModalitySpec], seed: int) -> None:
        import kornia.augmentation as K  # imported here: only runs that augment pay its 0.2 s of import

        self.transforms = {m: K.AugmentationSequential(K.RandomResizedCrop(tuple(spec.shape[-2:]), scale=SCALE, ratio=RATIO),
                                                       K.RandomHorizontalFlip(p=0.5))
                           for m, spec in modalities.items() if augmentable(spec)}
        self.seed = seed

    def __call__(self, inputs: dict[str, torch.Tensor], epoch: int, step: int) -> dict[str, torch.Tensor]:
        # The CPU generator keeps 32 bits of a seed: SeedSequence mixes all three numbers into them.
        state = np.random.SeedSequence([self.seed % 2**32, epoch, step]).generate_state(1)[0]
        out = dict(inputs)
        with torch.random.fork_rng(devices=[]):  # kornia samples on the CPU generator; CUDA streams are not touched
            torch.random.default_generator.manual_seed(int(state))
            for modality, transform in self.transforms.items():
                x = inputs[modality]
                frames = x.flatten(0, 1) if x.dim() == 5 else x  # video: each frame on its own
                out[modality] = transform(frames).view_as(x)
        return out
