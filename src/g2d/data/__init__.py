"""Datasets and the registry that ``dataset.name`` selects from.

Every module of this package is imported here, so a dataset registers its record (loader,
task, options, ``g2d prepare`` command) in its own module and needs no line elsewhere.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from g2d.config import DatasetConfig, ExperimentConfig, check_settings
from g2d.data.base import (
    DATASETS,
    Batches,
    DatasetRecord,
    ModalitySpec,
    MultimodalData,
    dataset_options,
    to_device,
)
from g2d.errors import G2DError

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from g2d.data.augment import normalize_visual  # noqa: E402 (after the registering imports above)


def prepare_commands() -> dict[str, Any]:
    """The ``g2d prepare`` subcommands: each dataset record's ``prepare`` command, by dataset name."""
    return {name: record.prepare for name, record in sorted(DATASETS.items()) if record.prepare is not None}


def load_dataset(config: DatasetConfig) -> MultimodalData:
    """Load the configured dataset (visual modalities standardised under ``dataset.normalize``), restricted to
    ``dataset.modalities`` when given."""
    if not isinstance(config, DatasetConfig):
        hint = "; pass its dataset section: load_dataset(config.dataset)" if isinstance(config, ExperimentConfig) else ""
        raise G2DError(f"load_dataset(config=...): must be a DatasetConfig (a config's dataset section), got "
                       f"{type(config).__name__}{hint}")
    check_settings(config, "dataset")
    options = dataset_options(config)
    data = DATASETS[config.name].load(config, options)
    if config.normalize:
        data = normalize_visual(data)
    return data.select(config.modalities) if config.modalities else data


__all__ = ["DATASETS", "Batches", "DatasetRecord", "ModalitySpec", "MultimodalData", "dataset_options",
           "load_dataset", "prepare_commands", "to_device"]
