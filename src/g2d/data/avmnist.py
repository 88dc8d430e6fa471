"""Load a folder in the AV-MNIST layout (the original AV-MNIST or one built by ``prepare_avdigits``).

Layout: ``image/{train,test}_data.npy`` (N x 784 uint8), ``audio/{train,test}_data.npy``
(N x 112 x 112 uint8 spectrograms) and ``{train,test}_labels.npy``. Arrays stay uint8 in
memory; the modality specs scale them by 1/255 at batch time.

Validation is carved from train: a stratified ``val_fraction`` by default, or, with
``val_rows``, the last ``val_rows`` training rows, which is how MultiBench's
``get_dataloader`` splits the real AV-MNIST (60,000 -> 55,000 train + 5,000 validation; the
10,000 test rows stay test) and the split the G²D paper reports. ``prepare_avmnist`` writes
that split once as a prepared folder (see ``prepared.py``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from g2d.config import DatasetConfig
from g2d.data.base import (
    DATASETS,
    ModalitySpec,
    MultimodalData,
    stratified_split,
)
from g2d.data.commands import PrepareCommand, common, common_arguments, describe_splits
from g2d.data.prepared import (
    LABEL,
    PreparedWriter,
    SkipLog,
    load_prepared_dataset,
    say,
    spec_entry,
)
from g2d.errors import G2DError

IMAGE_SHAPE = (1, 28, 28)
AUDIO_SHAPE = (1, 112, 112)
NUM_CLASSES = 10


MULTIBENCH_VAL_ROWS = 5000
SPEC = {
    "audio": ModalitySpec(kind="image", shape=AUDIO_SHAPE, scale=1 / 255),
    "image": ModalitySpec(kind="image", shape=IMAGE_SHAPE, scale=1 / 255),
}


def read_avmnist(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """The train and test arrays of an AV-MNIST-layout folder, checked, shaped per SPEC."""
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
    return arrays


def last_rows_split(count: int, val_rows: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices with the last ``val_rows`` of ``count`` rows held out, MultiBench's rule."""
    if not 0 < val_rows < count:
        raise G2DError(f"{key}: must be between 1 and {count - 1} (the training rows), got {val_rows}")
    return np.arange(count - val_rows), np.arange(count - val_rows, count)


def load_avmnist(
    root: Path, val_fraction: float, split_seed: int, name: str = "avmnist", val_rows: int | None = None
) -> MultimodalData:
    """Read an AV-MNIST-layout folder into a MultimodalData, carving validation from train.

    ``val_rows`` holds out the last rows (MultiBench's split); otherwise a stratified ``val_fraction``.
    """
    arrays = read_avmnist(Path(root))
    if val_rows is None:
        rest, held = stratified_split(arrays["train"]["label"], val_fraction, split_seed)
        rule = "validation rows are a stratified dataset.val_fraction of train"
    else:
        rest, held = last_rows_split(len(arrays["train"]["label"]), val_rows, "config key dataset.options.val_rows")
        rule = f"validation rows are the last {val_rows} training rows (MultiBench's AV-MNIST split)"
    splits = {
        "train": {key: torch.from_numpy(np.ascontiguousarray(value[rest])) for key, value in arrays["train"].items()},
        "val": {key: torch.from_numpy(np.ascontiguousarray(value[held])) for key, value in arrays["train"].items()},
        "test": {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in arrays["test"].items()},
    }
    return MultimodalData(
        name=name,
        task="classification",
        num_classes=NUM_CLASSES,
        modalities=dict(SPEC),
        splits=splits,
        class_names=[str(digit) for digit in range(NUM_CLASSES)],
        notes={
            "split": (
                f"{rule}; they may share recordings with training rows (pairing is by label); "
                "test shares no recording and no image with train"
            )
        },
    )


@dataclass
class AVMNISTOptions:
    """``val_rows``: the last training rows held out for validation (MultiBench's split) instead of a
    stratified ``dataset.val_fraction``; raw AV-MNIST-layout folders only."""

    val_rows: Optional[int] = None


def load_avmnist_layout(config: DatasetConfig, options: AVMNISTOptions) -> MultimodalData:
    """An AV-MNIST-layout folder (image/, audio/, *_labels.npy) named by ``dataset.root``."""
    return load_avmnist(Path(config.root or ""), config.val_fraction, config.split_seed, name=config.name,
                        val_rows=options.val_rows)


def prepare_avmnist(
    root: Path, out: Path, val_rows: int = MULTIBENCH_VAL_ROWS, progress: bool = True, overwrite: bool = False
) -> dict:
    """Write the AV-MNIST folder at ``root`` as a prepared folder with train / val / test fixed.

    Validation is the last ``val_rows`` training rows, as MultiBench and the G²D paper split
    the real AV-MNIST (55,000 / 5,000 / 10,000).
    """
    root, out = Path(root), Path(out)
    arrays = read_avmnist(root)
    rest, held = last_rows_split(len(arrays["train"]["label"]), val_rows, "--val-rows")
    rows = {"train": ("train", rest), "val": ("train", held), "test": ("test", np.arange(len(arrays["test"]["label"])))}
    with PreparedWriter(out, overwrite) as writer:
        for split, (source, index) in rows.items():
            for key in ("audio", "image"):
                writer.save(split, key, arrays[source][key][index])
            writer.save(split, LABEL, arrays[source]["label"][index])
            say(progress, f"avmnist: {split}: {len(index)} rows")
        meta = {
            "dataset": "avmnist",
            "task": "classification",
            "class_names": [str(digit) for digit in range(NUM_CLASSES)],
            "modalities": {key: spec_entry(spec, np.uint8) for key, spec in SPEC.items()},
            "splits": {split: int(len(index)) for split, (_, index) in rows.items()},
            "sources": {"root": str(root)},
            "val_fraction": None,
            "settings": {"val_rows": val_rows},
            "split_rule": (
                f"train = the first {len(rest)} rows of train_labels.npy, val = its last {val_rows} rows "
                "(MultiBench's get_dataloader), test = test_labels.npy"
            ),
            "skipped": SkipLog().counts(),
        }
        meta = writer.finish(meta, SkipLog())
    say(progress, f"avmnist: wrote {out}")
    return meta


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


def avmnist_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "the AV-MNIST folder")
    parser.add_argument("--val-rows", type=int, default=5000, help="last training rows held out for validation")


def run_avmnist(args: argparse.Namespace) -> dict:
    return prepare_avmnist(val_rows=args.val_rows, **common(args))


@DATASETS.register(
    "avmnist", task="classification", Options=AVMNISTOptions,
    root="the folder with image/, audio/ and *_labels.npy, or one written by g2d prepare avmnist",
    prepare=PrepareCommand("AV-MNIST .npy folder with MultiBench's 55k/5k/10k split", avmnist_arguments, run_avmnist,
                           describe_splits))
def load_avmnist_folder(config: DatasetConfig, options: AVMNISTOptions) -> MultimodalData:
    """AV-MNIST from a raw folder, or from one written by ``g2d prepare avmnist`` (its own validation split)."""
    if not (Path(config.root or "") / "prepare.json").is_file():
        return load_avmnist_layout(config, options)
    if options.val_rows is not None:
        raise G2DError(f"config key dataset.options.val_rows: {config.root} was written by g2d prepare avmnist, "
                       "whose validation rows are fixed (--val-rows); leave the option out")
    return load_prepared_dataset(config, options)
