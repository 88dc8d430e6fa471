"""Houses (Ahmed & Moustafa 2016): house price from four photos and a table row, a small image + tabular regression.

Layout of ``dataset.root``: ``HousesInfo.txt`` (per line, space-separated: bedrooms bathrooms
area zipcode price; line n describes house n) and ``images/{n}_{frontal,bedroom,bathroom,kitchen}.jpg``.

Modalities:
- ``image``: the four photos as one 2x2 montage (frontal, bedroom / kitchen, bathroom), each
  photo squashed to ``image_size / 2`` pixels square, as Ahmed & Moustafa did; with
  ``photos: separate`` each photo is its own modality instead (``frontal``, ``bedroom``, ...).
- ``tabular``: bedrooms, bathrooms and area standardized with the training rows' statistics,
  plus a one-hot of the zip codes that have at least ``zip_min_count`` training houses and one
  "other zip" column (``zipcode: drop`` leaves zip codes out). A zip code is a label, not a
  quantity, so it is never fed as a number; rare zips share a column so that no column is
  learnt from one or two houses. The set of zip columns comes from the training split, so the
  tabular width can differ between folds.

Target: price, scaled to [0, 1] by the training rows' min and max (``target_offset`` and
``target_span`` give dollars back; MAPE is measured in dollars). With 535 houses the usual
protocol is k-fold cross-validation (``dataset.folds``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from g2d.config import Choice, DatasetConfig
from g2d.data.base import (
    DATASETS,
    ModalitySpec,
    MultimodalData,
    split_indices,
    standardization,
    target_scale,
)
from g2d.data.images import read_image
from g2d.data.options import plain, require_positive
from g2d.errors import G2DError

PHOTOS = ("frontal", "bedroom", "kitchen", "bathroom")
COLUMNS = ("bedrooms", "bathrooms", "area", "zipcode", "price")
NUMERIC = ("bedrooms", "bathrooms", "area")


class Photos(Choice):
    montage = "montage"
    separate = "separate"


class Zipcode(Choice):
    onehot = "onehot"
    drop = "drop"


@dataclass
class HousesOptions:
    """``dataset.options`` of houses (docs/datasets.md)."""

    image_size: int = 64
    photos: Photos = Photos.montage
    zipcode: Zipcode = Zipcode.onehot
    zip_min_count: int = 10

    def __post_init__(self) -> None:
        require_positive(self, ["image_size", "zip_min_count"])
        if self.photos == "montage" and self.image_size % 2:
            raise G2DError(f"config key dataset.options.image_size: a 2x2 montage needs an even size, "
                           f"got {self.image_size}")


@DATASETS.register("houses", task="regression", folds=True, Options=HousesOptions,
                   root="the folder with HousesInfo.txt and images/ (e.g. dataset.root=../shared/data/houses)")
def load_houses(config: DatasetConfig, settings: HousesOptions) -> MultimodalData:
    """The houses folder as a regression dataset; every file is decoded here, once."""
    options = plain(settings)
    root = Path(config.root)
    if not root.is_dir():
        raise G2DError(f"{root}: houses folder not found (config key dataset.root)")
    table = read_table(root / "HousesInfo.txt")
    index = split_indices(config, len(table))
    images = read_photos(root / "images", len(table), options["image_size"], options["photos"] == "montage")
    train = index["train"]
    tabular, tabular_names = tabular_features(table, train, options["zipcode"], options["zip_min_count"])
    offset, span = target_scale(table[train, 4], f"{root / 'HousesInfo.txt'} price")
    targets = ((table[:, 4] - offset) / span).astype(np.float32)
    arrays = {**images, "tabular": tabular, "label": targets}
    splits = {split: {key: torch.from_numpy(np.ascontiguousarray(value[rows])) for key, value in arrays.items()}
              for split, rows in index.items()}
    modalities = {name: ModalitySpec(kind="image", shape=tuple(pixels.shape[1:]), scale=1 / 255)
                  for name, pixels in images.items()}
    modalities["tabular"] = ModalitySpec(kind="vector", shape=(tabular.shape[1],))
    return MultimodalData(
        name="houses",
        task="regression",
        num_classes=1,
        modalities=modalities,
        splits=splits,
        notes={"tabular_columns": ", ".join(tabular_names),
               "target": "price in dollars, min-max scaled with the training split"},
        target_offset=offset,
        target_span=span,
    )


def read_table(path: Path) -> np.ndarray:
    """``HousesInfo.txt`` as float64 ``[N, 5]``; a malformed line is an error naming its number."""
    if not path.is_file():
        raise G2DError(f"{path}: houses table not found")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            values = [float(field) for field in fields]
        except ValueError:
            values = []
        if len(values) != len(COLUMNS):
            raise G2DError(f"{path} line {number}: expected {len(COLUMNS)} numbers ({' '.join(COLUMNS)}), got {line!r}")
        if values[4] <= 0:
            raise G2DError(f"{path} line {number}: price must be positive, got {values[4]}")
        rows.append(values)
    if not rows:
        raise G2DError(f"{path}: no houses in the table")
    return np.asarray(rows, dtype=np.float64)


def read_photos(folder: Path, count: int, size: int, montage: bool) -> dict[str, np.ndarray]:
    """Each house's photos as uint8 ``[N, 3, size, size]``: one ``image`` montage or one array per photo."""
    tile = size // 2 if montage else size
    photos = {name: np.empty((count, 3, tile, tile), dtype=np.uint8) for name in PHOTOS}
    for row in range(count):
        for name in PHOTOS:
            photos[name][row] = read_image(folder / f"{row + 1}_{name}.jpg", (tile, tile))
    if not montage:
        return photos
    top = np.concatenate([photos["frontal"], photos["bedroom"]], axis=3)
    bottom = np.concatenate([photos["kitchen"], photos["bathroom"]], axis=3)
    return {"image": np.concatenate([top, bottom], axis=2)}


def tabular_features(table: np.ndarray, train: np.ndarray, zipcode: str, min_count: int) -> tuple[np.ndarray, list[str]]:
    """Standardized bedrooms, bathrooms, area (training statistics), then the zip one-hot; and column names."""
    numeric = table[:, : len(NUMERIC)]
    mean, std = standardization(numeric[train])
    columns = [(numeric - mean) / std]
    names = list(NUMERIC)
    if zipcode == "onehot":
        zips = table[:, 3].astype(np.int64)
        values, counts = np.unique(zips[train], return_counts=True)
        frequent = values[counts >= min_count]
        onehot = (zips[:, None] == frequent[None, :]).astype(np.float64)
        other = 1.0 - onehot.sum(axis=1, keepdims=True)
        columns += [onehot, other]
        names += [f"zip_{z}" for z in frequent] + ["zip_other"]
    return np.concatenate(columns, axis=1).astype(np.float32), names

