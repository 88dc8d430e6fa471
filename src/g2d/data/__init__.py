"""Dataset loaders and the registry that ``dataset.name`` selects from.

Each entry maps a name to a function ``DatasetConfig -> MultimodalData``; loaders import
their module lazily so a dataset's optional dependencies are needed only when it is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from g2d.config import DatasetConfig
from g2d.data.base import Batches, ModalitySpec, MultimodalData, to_device
from g2d.data.options import reject_unknown
from g2d.errors import G2DError
from g2d.registry import Registry


def _mfeat(config: DatasetConfig) -> MultimodalData:
    from g2d.data.mfeat import load_mfeat

    return load_mfeat(config)


def refuse_folds(config: DatasetConfig) -> None:
    """Datasets that ship a fixed test split do not take k-fold cross-validation."""
    if config.folds:
        raise G2DError(f"config key dataset.folds: {config.name} has a fixed test split; use 0")


def _avmnist(config: DatasetConfig) -> MultimodalData:
    from g2d.data.avmnist import load_avmnist

    if not config.root:
        raise G2DError(f"config key dataset.root: {config.name} needs the folder with image/, audio/ and *_labels.npy")
    refuse_folds(config)
    if config.name == "avmnist" and (Path(config.root) / "prepare.json").is_file():
        return _prepared(config)
    reject_unknown(config.name, config.options, ["val_rows"])
    val_rows = config.options.get("val_rows")
    if val_rows is not None and (isinstance(val_rows, bool) or not isinstance(val_rows, int)):
        raise G2DError(f"config key dataset.options.val_rows: must be an integer row count, got {val_rows!r}")
    return load_avmnist(Path(config.root), config.val_fraction, config.split_seed, name=config.name, val_rows=val_rows)


def _prepared(config: DatasetConfig) -> MultimodalData:
    """A folder written by ``g2d prepare <name>``, memory-mapped (see ``g2d.data.prepared``)."""
    from g2d.data.prepared import load_prepared

    reject_unknown(config.name, config.options, [])
    refuse_folds(config)
    if not config.root:
        raise G2DError(f"config key dataset.root: {config.name} needs the folder written by g2d prepare {config.name}")
    return load_prepared(config.root, config.name, config.val_fraction, DatasetConfig.val_fraction)


def _houses(config: DatasetConfig) -> MultimodalData:
    from g2d.data.houses import load_houses

    return load_houses(config)


def _csv(config: DatasetConfig) -> MultimodalData:
    from g2d.data.csv_dataset import load_csv_dataset

    return load_csv_dataset(config)


def _python(config: DatasetConfig) -> MultimodalData:
    from g2d.data.python_dataset import load_python_dataset

    return load_python_dataset(config)


LOADERS: Registry[Callable[[DatasetConfig], MultimodalData]] = Registry("dataset", "dataset.name")
for _name, _loader in (("mfeat", _mfeat), ("avmnist", _avmnist), ("avdigits", _avmnist), ("cremad", _prepared),
                       ("vggsound", _prepared), ("urfunny", _prepared), ("iemocap", _prepared),
                       ("misme", _prepared), ("houses", _houses), ("csv", _csv), ("python", _python)):
    LOADERS.register(_name)(_loader)
DATASETS = tuple(LOADERS)


def load_dataset(config: DatasetConfig) -> MultimodalData:
    """Load the configured dataset, restricted to ``dataset.modalities`` when given."""
    if config.factory and config.name != "python":
        raise G2DError(f"config key dataset.factory: only dataset.name=python calls a factory (dataset.name is "
                       f"{config.name})")
    data = LOADERS[config.name](config)
    return data.select(config.modalities) if config.modalities else data


__all__ = ["DATASETS", "LOADERS", "Batches", "ModalitySpec", "MultimodalData", "load_dataset", "to_device"]
