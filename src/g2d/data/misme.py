"""MIS-ME: soil-patch photos and meteorological readings of three Oklahoma stations, target soil VWC.

The MIS-ME code (Rakib et al. 2024) reads an image folder and one table per split
(``combined_only_{train,val,test}_set.xlsx``) whose rows name an image (column ``image``), give
the volumetric water content (``vwc``) and eight meteorological columns. The exact layout of its
release archive could not be checked here, so this is the layout expected (documented in
docs/datasets.md)::

    ROOT/images/<image file>      the photos the tables name (or --images DIR)
    ROOT/train.csv, val.csv, test.csv
        (MIS-ME's tables exported as CSV; combined_only_<split>_set.csv is accepted too)
        columns: image, vwc, and the meteorological columns (--columns; MIS-ME's eight by default)

As in MIS-ME, missing meteorological values are filled with the training mean and every column
is standardized with the training mean and standard deviation; images are resized to
``size`` x ``size`` (no crop). The target is stored in its own units and scaled to [0, 1] with
the training minimum and range when loaded (``target_offset``, ``target_span``).
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from g2d.data.base import DATASETS, ModalitySpec
from g2d.data.commands import PrepareCommand, common, common_arguments, describe_splits
from g2d.data.prepared import (
    LABEL,
    PreparedWriter,
    SkipLog,
    load_prepared_dataset,
    map_items,
    say,
    spec_entry,
)
from g2d.errors import G2DError

COLUMNS = (
    "air_temperature",
    "relative_humidity",
    "precipitation",
    "solar_flux_density",
    "wind_speed",
    "barometric_pressure",
    "tilt_north_south",
    "tilt_west_east",
)
IMAGE_COLUMN = "image"
TARGET_COLUMN = "vwc"
MISSING = ("", "nan", "na", "n/a", "null", "none")
SPLITS = ("train", "val", "test")


@dataclass
class _Row:
    image: str
    target: float
    values: list[float]


def table_path(root: Path, split: str) -> Path:
    """``<split>.csv`` or MIS-ME's ``combined_only_<split>_set.csv``; an .xlsx alone gets a clear error."""
    for name in (f"{split}.csv", f"combined_only_{split}_set.csv"):
        if (root / name).is_file():
            return root / name
    for name in (f"{split}.xlsx", f"combined_only_{split}_set.xlsx"):
        if (root / name).is_file():
            raise G2DError(f"{root / name}: Excel tables are not read; export it as {root / (split + '.csv')}")
    raise G2DError(f"{root / (split + '.csv')}: MIS-ME {split} table not found")


def parse_number(text: str, path: Path, line: int, column: str) -> float:
    """A cell as float; empty or NaN-like cells are NaN (missing), anything else non-numeric is an error."""
    if text.strip().lower() in MISSING:
        return math.nan
    try:
        return float(text)
    except ValueError as error:
        raise G2DError(f"{path}:{line}: column {column!r} holds {text!r}, not a number") from error


def read_table(path: Path, columns: tuple[str, ...], skipped: SkipLog, split: str) -> list[_Row]:
    """The rows of one split's table; a row without a target is skipped and counted."""
    rows = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in (IMAGE_COLUMN, TARGET_COLUMN, *columns) if c not in header]
        if missing:
            raise G2DError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(header)})")
        for line, record in enumerate(reader, start=2):
            image = (record[IMAGE_COLUMN] or "").strip()
            target = parse_number(record[TARGET_COLUMN] or "", path, line, TARGET_COLUMN)
            if not image or not math.isfinite(target):
                skipped.add(split, image or f"{path.name}:{line}", "no target: empty image name or vwc", loud=False)
                continue
            values = [parse_number(record[c] or "", path, line, c) for c in columns]
            rows.append(_Row(image, target, values))
    if not rows:
        raise G2DError(f"{path}: no rows with an image and a vwc value")
    return rows


@dataclass(frozen=True)
class _ImageJob:
    path: Path
    size: int


def load_image(job: _ImageJob) -> np.ndarray | str:
    """An RGB image resized to size x size as uint8 [3, size, size], or why it cannot be read."""
    if not job.path.is_file():
        return f"missing: {job.path} not found"
    try:
        with Image.open(job.path) as image:
            resized = image.convert("RGB").resize((job.size, job.size), Image.BILINEAR)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        return f"unreadable: {job.path} ({error})"
    return np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)


def prepare_misme(
    root: Path,
    out: Path,
    images: Path | None = None,
    columns: tuple[str, ...] = COLUMNS,
    size: int = 224,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Write the prepared MIS-ME folder ``out`` from the tables in ``root`` and the images; returns prepare.json."""
    root, out = Path(root), Path(out)
    images = Path(images) if images is not None else root / "images"
    if not root.is_dir():
        raise G2DError(f"{root}: MIS-ME folder not found")
    if not images.is_dir():
        raise G2DError(f"{images}: MIS-ME image folder not found (pass --images DIR)")
    if not columns or len(set(columns)) != len(columns):
        raise G2DError(f"--columns must name distinct columns, got {list(columns)}")
    if size < 8:
        raise G2DError(f"--size must be >= 8 pixels, got {size}")

    skipped = SkipLog()
    tables = {split: read_table(table_path(root, split), columns, skipped, split) for split in SPLITS}
    specs = {
        "image": ModalitySpec(kind="image", shape=(3, size, size), scale=1 / 255),
        "tabular": ModalitySpec(kind="vector", shape=(len(columns),)),
    }
    with PreparedWriter(out, overwrite) as writer:
        kept_rows: dict[str, list[_Row]] = {}
        for split, rows in tables.items():
            say(progress, f"misme: {split}: reading {len(rows)} images")
            pixels = writer.open(split, "image", (len(rows), *specs["image"].shape), np.uint8)
            kept_rows[split] = []
            jobs = [_ImageJob(images / row.image, size) for row in rows]
            for row, result in zip(rows, map_items(load_image, jobs, workers)):
                if isinstance(result, str):
                    skipped.add(split, row.image, result)
                    continue
                pixels[len(kept_rows[split])] = result
                kept_rows[split].append(row)
            pixels.flush()
            del pixels
            if not kept_rows[split]:
                raise G2DError(f"{images}: none of the {split} images could be read")
            writer.trim(split, "image", len(kept_rows[split]))

        train = np.array([row.values for row in kept_rows["train"]], dtype=np.float64)
        empty = [column for column, values in zip(columns, train.T) if np.isnan(values).all()]
        if empty:
            raise G2DError(f"{table_path(root, 'train')}: column(s) {', '.join(empty)} have no values in the training rows")
        fill = np.nanmean(train, axis=0)
        filled_cells = {}
        standardized = {}
        for split, rows in kept_rows.items():
            values = np.array([row.values for row in rows], dtype=np.float64)
            filled_cells[split] = int(np.isnan(values).sum())
            standardized[split] = np.where(np.isnan(values), fill, values)
        mean = standardized["train"].mean(axis=0)
        std = standardized["train"].std(axis=0)
        std[std == 0] = 1.0
        targets = {split: np.array([row.target for row in rows], dtype=np.float64) for split, rows in kept_rows.items()}
        low, high = float(targets["train"].min()), float(targets["train"].max())
        if not high > low:
            raise G2DError(f"{table_path(root, 'train')}: the training vwc values are all {low}; nothing to regress")
        for split in SPLITS:
            writer.save(split, "tabular", ((standardized[split] - mean) / std).astype(np.float32))
            writer.save(split, LABEL, targets[split].astype(np.float32))
        meta = {
            "dataset": "misme",
            "task": "regression",
            "class_names": [],
            "modalities": {"image": spec_entry(specs["image"], np.uint8), "tabular": spec_entry(specs["tabular"], np.float32)},
            "splits": {split: len(rows) for split, rows in kept_rows.items()},
            "sources": {"root": str(root), "images": str(images)},
            "val_fraction": None,
            "columns": list(columns),
            "target": {"column": TARGET_COLUMN, "offset": low, "span": high - low,
                       "rule": "stored in its own units; scaled to [0, 1] as (vwc - offset) / span when loaded"},
            "tabular": {
                "fill": fill.tolist(),
                "mean": mean.tolist(),
                "std": std.tolist(),
                "rule": "missing cells filled with the training mean, then (x - mean) / std with training statistics",
                "filled_cells": filled_cells,
            },
            "settings": {"size": size},
            "split_rule": "the tables' own train / val / test rows",
            "skipped": skipped.counts(),
        }
        meta = writer.finish(meta, skipped)
    say(progress, f"misme: wrote {out}")
    return meta


def misme_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "folder with {train,val,test}.csv")
    parser.add_argument("--images", type=Path, default=None, help="image folder (default: ROOT/images)")
    parser.add_argument("--columns", default=None, help="comma-separated meteorological columns (default: MIS-ME's 8)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--workers", type=int, default=1, help="image decoding processes")


def run_misme(args: argparse.Namespace) -> dict:
    columns = tuple(c.strip() for c in args.columns.split(",")) if args.columns else COLUMNS
    return prepare_misme(images=args.images, columns=columns, size=args.size, workers=args.workers, **common(args))


DATASETS.register(
    "misme", task="regression", root="the folder written by g2d prepare misme",
    prepare=PrepareCommand("MIS-ME soil images and meteorological tables", misme_arguments, run_misme,
                           describe_splits))(load_prepared_dataset)
