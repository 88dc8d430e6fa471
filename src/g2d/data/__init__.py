"""Dataset loaders and the registry that ``dataset.name`` selects from."""

from __future__ import annotations

from pathlib import Path

from g2d.config import DatasetConfig
from g2d.data.base import Batches, ModalitySpec, MultimodalData, to_device
from g2d.errors import G2DError

DATASETS = ("mfeat", "avmnist", "avdigits")


def load_dataset(config: DatasetConfig) -> MultimodalData:
    """Load the configured dataset, restricted to ``dataset.modalities`` when given."""
    if config.name == "mfeat":
        from g2d.data.mfeat import load_mfeat

        return load_mfeat(config.root, config.modalities, config.val_fraction, config.test_fraction, config.split_seed)
    if config.name in ("avmnist", "avdigits"):
        from g2d.data.avmnist import load_avmnist

        if not config.root:
            raise G2DError(f"config key dataset.root: {config.name} needs the folder with image/, audio/ and *_labels.npy")
        data = load_avmnist(Path(config.root), config.val_fraction, config.split_seed, name=config.name)
        return data.select(config.modalities) if config.modalities else data
    raise G2DError(f"config key dataset.name: unknown dataset {config.name!r} (available: {', '.join(DATASETS)})")


__all__ = ["DATASETS", "Batches", "ModalitySpec", "MultimodalData", "load_dataset", "to_device"]
