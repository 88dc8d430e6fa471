"""UCI Multiple Features: six real feature views of the same 2,000 handwritten digits.

Shipped inside the package (CC BY 4.0, see ``data/mfeat/README.md``), so the demo needs no
download. There is no official split: test and validation are carved, stratified, with
``dataset.split_seed`` (or test is one fold of ``dataset.folds``); each view is standardized
with the training rows' mean and std.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from g2d.config import DatasetConfig
from g2d.data.base import (
    DATASETS,
    ModalitySpec,
    MultimodalData,
    split_indices,
)
from g2d.errors import G2DError

VIEWS = ("fou", "fac", "kar", "pix", "zer", "mor")
EMBEDDED = Path(__file__).resolve().parent / "mfeat"


def read_view(root: Path, view: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32) and labels (int64) of one view's CSV."""
    path = root / f"mfeat-{view}.csv"
    if not path.is_file():
        raise G2DError(f"mfeat view file not found: {path}")
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64)
    except ValueError as exc:
        raise G2DError(f"{path}: not a numeric CSV ({exc})") from exc
    if table.ndim != 2 or table.shape[0] != 2000:
        raise G2DError(f"{path}: expected 2000 rows of features plus a label, got shape {table.shape}")
    return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int64)


@DATASETS.register("mfeat", task="classification", folds=True)
def load_mfeat(config: DatasetConfig, options: Any = None) -> MultimodalData:
    """The chosen views (all six by default) as a classification dataset with train/val/test.

    Test is the fixed stratified ``test_fraction`` or, with ``dataset.folds``, one stratified fold.
    """
    folder = Path(config.root) if config.root else EMBEDDED
    views = list(config.modalities) or list(VIEWS)
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise G2DError(f"config key dataset.modalities: unknown mfeat view {unknown[0]!r} (views: {', '.join(VIEWS)})")
    features: dict[str, np.ndarray] = {}
    labels = None
    for view in views:
        features[view], view_labels = read_view(folder, view)
        if labels is not None and not np.array_equal(labels, view_labels):
            raise G2DError(f"{folder / f'mfeat-{view}.csv'}: labels differ from the other views")
        labels = view_labels
    assert labels is not None
    index = split_indices(config, len(labels), labels)
    splits: dict[str, dict[str, torch.Tensor]] = {s: {} for s in index}
    for view, values in features.items():
        train = values[index["train"]]
        mean, std = train.mean(axis=0), train.std(axis=0)
        std[std == 0] = 1.0
        for split, rows in index.items():
            splits[split][view] = torch.from_numpy((values[rows] - mean) / std)
    for split, rows in index.items():
        splits[split]["label"] = torch.from_numpy(labels[rows])
    return MultimodalData(
        name="mfeat",
        task="classification",
        num_classes=10,
        modalities={v: ModalitySpec(kind="vector", shape=(features[v].shape[1],)) for v in views},
        splits=splits,
        class_names=[str(d) for d in range(10)],
    )

