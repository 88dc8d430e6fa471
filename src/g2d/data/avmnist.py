"""Load a folder in the AV-MNIST layout (the original AV-MNIST or one built by ``prepare_avdigits``).

Layout: ``image/{train,test}_data.npy`` (N x 784 uint8), ``audio/{train,test}_data.npy``
(N x 112 x 112 uint8 spectrograms) and ``{train,test}_labels.npy``. Arrays stay uint8 in
memory; the modality specs scale them by 1/255 at batch time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from g2d.data.base import ModalitySpec, MultimodalData, stratified_split
from g2d.errors import G2DError

IMAGE_SHAPE = (1, 28, 28)
AUDIO_SHAPE = (1, 112, 112)
NUM_CLASSES = 10


def load_avmnist(root: Path, val_fraction: float, split_seed: int, name: str = "avmnist") -> MultimodalData:
    """Read an AV-MNIST-layout folder into a MultimodalData, carving a stratified validation split from train."""
    root = Path(root)
    if not root.is_dir():
        raise G2DError(f"{root}: AV-MNIST folder not found")
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for split in ("train", "test"):
        labels = _load_labels(root / f"{split}_labels.npy")
        arrays[split] = {
            "audio": _load_pixels(root / "audio" / f"{split}_data.npy", AUDIO_SHAPE, len(labels)),
            "image": _load_pixels(root / "image" / f"{split}_data.npy", IMAGE_SHAPE, len(labels)),
            "label": labels,
        }
    rest, held = stratified_split(arrays["train"]["label"], val_fraction, split_seed)
    splits = {
        "train": {key: torch.from_numpy(np.ascontiguousarray(value[rest])) for key, value in arrays["train"].items()},
        "val": {key: torch.from_numpy(np.ascontiguousarray(value[held])) for key, value in arrays["train"].items()},
        "test": {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in arrays["test"].items()},
    }
    return MultimodalData(
        name=name,
        task="classification",
        num_classes=NUM_CLASSES,
        modalities={
            "audio": ModalitySpec(kind="image", shape=AUDIO_SHAPE, scale=1 / 255),
            "image": ModalitySpec(kind="image", shape=IMAGE_SHAPE, scale=1 / 255),
        },
        splits=splits,
        class_names=[str(digit) for digit in range(NUM_CLASSES)],
        notes={
            "split": (
                "validation rows are carved from train and may share recordings with it (pairing is by label); "
                "test shares no recording and no image with train"
            )
        },
    )


def _load_array(path: Path) -> np.ndarray:
    """np.load a required .npy file without pickles, naming the file on failure."""
    if not path.is_file():
        raise G2DError(f"{path}: AV-MNIST file not found")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise G2DError(f"{path}: cannot read .npy file ({error})") from error


def _load_labels(path: Path) -> np.ndarray:
    """A 1-D integer label array with digits 0..9, as int64."""
    labels = _load_array(path)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise G2DError(f"{path}: expected a 1-D integer label array, got {labels.dtype} {labels.shape}")
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise G2DError(f"{path}: labels must be digits 0..{NUM_CLASSES - 1} and not empty")
    return labels.astype(np.int64)


def _load_pixels(path: Path, shape: tuple[int, ...], count: int) -> np.ndarray:
    """A uint8 array of ``count`` samples reshaped to ``(count, *shape)``; flat or 2-D rows are accepted."""
    data = _load_array(path)
    if data.dtype != np.uint8:
        raise G2DError(f"{path}: expected uint8 data, got {data.dtype}")
    size = int(np.prod(shape))
    if data.ndim < 2 or len(data) != count or int(np.prod(data.shape[1:])) != size:
        raise G2DError(f"{path}: expected {count} samples of {size} values ({shape}), got shape {data.shape}")
    return data.reshape((count, *shape))
