"""A dataset described by one CSV file, filled in without code: ``dataset.name=csv dataset.root=INDEX.csv``.

Columns (one row per sample):
- ``label`` (classification: strings or integers; classes are the sorted distinct values) or
  ``target`` (regression: numbers, min-max scaled to [0, 1] with the training rows).
- ``split`` (optional): ``train``, ``val`` or ``test`` per row; without it the rows are split
  with ``dataset.val_fraction``/``test_fraction``/``split_seed`` (or ``dataset.folds``),
  stratified by label for classification.
- ``<modality>:<feature>``: numeric columns grouped by the prefix into one tabular vector
  modality, standardized with the training rows' mean and std.
- a column named in ``text_columns``: raw text, tokenized once here with the tokenizer saved
  in the folder ``tokenizer`` (padded to the longest row, at most ``max_tokens``), giving a
  ``tokens`` modality (ids + mask) for the ``hf`` encoder.
- any other column: a modality of file paths, relative to the CSV's folder; the extension
  picks the reader: ``.png/.jpg/.jpeg`` images (Pillow, resized to ``image_size``, uint8),
  ``.wav/.flac`` audio (soundfile, resampled, cropped or zero-padded to ``audio_seconds``,
  log-magnitude spectrogram by torch.stft, standardized with the training rows; or, with
  ``audio_input: waveform``, the samples themselves as a vector, for waveform models), ``.npy``
  feature arrays: 1-D gives a vector modality, 2-D ``(T, d)`` a padded sequence with a mask,
  both standardized per feature with the training rows.
Every file is decoded once, here; errors name the CSV line, the column and the file.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from g2d.config import Choice, DatasetConfig
from g2d.data.audio import log_spectrogram, read_wav, resample
from g2d.data.base import (
    DATASETS,
    SPLITS,
    ModalitySpec,
    MultimodalData,
    mask_key,
    split_indices,
    standardization,
    target_scale,
)
from g2d.data.images import read_image
from g2d.data.options import plain, require_positive
from g2d.errors import G2DError

RESERVED = ("label", "target", "split")
FILE_KINDS = {".png": "image", ".jpg": "image", ".jpeg": "image", ".wav": "audio", ".flac": "audio", ".npy": "npy"}


class ImageMode(Choice):
    RGB = "RGB"
    L = "L"


class AudioInput(Choice):
    spectrogram = "spectrogram"
    waveform = "waveform"


@dataclass
class CSVOptions:
    """``dataset.options`` of the csv dataset (docs/datasets.md)."""

    image_size: int = 64
    image_mode: ImageMode = ImageMode.RGB
    sample_rate: int = 16000
    audio_seconds: float = 1.0
    n_fft: int = 512
    hop: int = 128
    ignore_columns: list[str] = field(default_factory=list)
    audio_input: AudioInput = AudioInput.spectrogram
    text_columns: list[str] = field(default_factory=list)
    tokenizer: str = ""
    max_tokens: int = 128

    def __post_init__(self) -> None:
        require_positive(self, ["image_size", "sample_rate", "audio_seconds", "n_fft", "hop", "max_tokens"])


@dataclass
class Table:
    """The CSV's header and cells, with each row's line number for error messages."""

    path: Path
    columns: list[str]
    rows: list[list[str]]
    lines: list[int]

    def column(self, name: str) -> list[str]:
        position = self.columns.index(name)
        return [row[position] for row in self.rows]

    def where(self, row: int, column: str) -> str:
        return f"{self.path} line {self.lines[row]}, column {column!r}"


@DATASETS.register("csv", task=None, folds=True, Options=CSVOptions, root="the path of its index CSV file")
def load_csv_dataset(config: DatasetConfig, settings: CSVOptions) -> MultimodalData:
    """The dataset an index CSV describes, decoded into memory."""
    options = plain(settings)
    table = read_table(Path(config.root))
    groups = modality_columns(table, options["ignore_columns"])
    check_text_columns(table, groups, options)
    if config.modalities:
        unknown = [m for m in config.modalities if m not in groups]
        if unknown:
            raise G2DError(f"config key dataset.modalities: {table.path} has no modality {unknown[0]!r} "
                           f"(modalities: {', '.join(groups)})")
        groups = {m: groups[m] for m in config.modalities}
    task = "classification" if "label" in table.columns else "regression"
    labels, class_names = read_labels(table) if task == "classification" else (read_targets(table), [])
    index = read_split(table, config) if "split" in table.columns else split_indices(
        config, len(table.rows), labels if task == "classification" else None)
    train = index["train"]
    arrays: dict[str, np.ndarray] = {}
    modalities: dict[str, ModalitySpec] = {}
    for name, columns in groups.items():
        if is_tabular(columns):
            arrays[name] = tabular_values(table, columns, train)
            modalities[name] = ModalitySpec(kind="vector", shape=(arrays[name].shape[1],))
            continue
        if name in options["text_columns"]:
            arrays[name], arrays[mask_key(name)] = tokenize(table, name, options)
            modalities[name] = ModalitySpec(kind="tokens", shape=(arrays[name].shape[1],))
            continue
        kind = file_kind(table, name)
        paths = [resolve(table, row, name) for row in range(len(table.rows))]
        if kind == "image":
            arrays[name] = read_images(table, name, paths, options)
            modalities[name] = ModalitySpec(kind="image", shape=tuple(arrays[name].shape[1:]), scale=1 / 255)
        elif kind == "audio" and options["audio_input"] == "waveform":
            arrays[name] = read_waveforms(table, name, paths, options)
            modalities[name] = ModalitySpec(kind="vector", shape=tuple(arrays[name].shape[1:]))
        elif kind == "audio":
            arrays[name] = read_spectrograms(table, name, paths, options, train)
            modalities[name] = ModalitySpec(kind="image", shape=tuple(arrays[name].shape[1:]))
        else:
            values, mask = read_arrays(table, name, paths, train)
            arrays[name] = values
            if mask is None:
                modalities[name] = ModalitySpec(kind="vector", shape=tuple(values.shape[1:]))
            else:
                arrays[mask_key(name)] = mask
                modalities[name] = ModalitySpec(kind="sequence", shape=tuple(values.shape[1:]))
    offset, span = 0.0, 1.0
    if task == "regression":
        offset, span = target_scale(labels[train], f"{table.path} column 'target'")
        labels = ((labels - offset) / span).astype(np.float32)
    arrays["label"] = labels
    splits = {split: {key: torch.from_numpy(np.ascontiguousarray(value[rows])) for key, value in arrays.items()}
              for split, rows in index.items()}
    return MultimodalData(
        name="csv",
        task=task,
        num_classes=len(class_names) if task == "classification" else 1,
        modalities=modalities,
        splits=splits,
        class_names=class_names,
        notes={"index": str(table.path)},
        target_offset=offset,
        target_span=span,
    )


def read_table(path: Path) -> Table:
    """Header and rows of the index; every row must have the header's number of cells."""
    if not path.is_file():
        raise G2DError(f"{path}: index CSV not found (config key dataset.root)")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = [name.strip() for name in next(reader)]
        except StopIteration:
            raise G2DError(f"{path}: empty CSV, expected a header row") from None
        rows, lines = [], []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise G2DError(f"{path} line {reader.line_num}: {len(row)} cells, the header has {len(header)}")
            rows.append([cell.strip() for cell in row])
            lines.append(reader.line_num)
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise G2DError(f"{path}: column {duplicated[0]!r} appears twice in the header")
    if ("label" in header) == ("target" in header):
        raise G2DError(f"{path}: needs exactly one of a 'label' column (classification) or a 'target' column "
                       f"(regression); header: {', '.join(header)}")
    if not rows:
        raise G2DError(f"{path}: no data rows")
    return Table(path, header, rows, lines)


def modality_columns(table: Table, ignored: list[str]) -> dict[str, list[str]]:
    """Modality name -> its columns: ``[name]`` for a file column, the ``name:feature`` columns for tabular."""
    for column in ignored:
        if column not in table.columns:
            raise G2DError(f"config key dataset.options.ignore_columns: {table.path} has no column {column!r}")
    groups: dict[str, list[str]] = {}
    for column in table.columns:
        if column in RESERVED or column in ignored:
            continue
        name, tabular, feature = column.partition(":")
        if not name or "." in name or (tabular and not feature):
            raise G2DError(f"{table.path}: column {column!r} is not a modality name (no '.'), nor "
                           "'<modality>:<feature>' for a tabular value")
        if name in groups and not (tabular and is_tabular(groups[name])):
            raise G2DError(f"{table.path}: column {column!r} reuses modality name {name!r}")
        groups.setdefault(name, []).append(column)
    if not groups:
        raise G2DError(f"{table.path}: no modality columns beside {', '.join(c for c in table.columns if c in RESERVED)}")
    return groups


def is_tabular(columns: list[str]) -> bool:
    """Whether a modality's columns are ``<modality>:<feature>`` values rather than one column of files."""
    return ":" in columns[0]


def read_labels(table: Table) -> tuple[np.ndarray, list[str]]:
    """Class indices (classes sorted: numerically when every label is an integer) and class names."""
    values = table.column("label")
    for row, value in enumerate(values):
        if not value:
            raise G2DError(f"{table.where(row, 'label')}: empty label")
    try:
        classes = [str(c) for c in sorted({int(v) for v in values})]
        values = [str(int(v)) for v in values]
    except ValueError:
        classes = sorted(set(values))
    if len(classes) < 2:
        raise G2DError(f"{table.path} column 'label': a classification dataset needs at least two classes")
    position = {name: index for index, name in enumerate(classes)}
    return np.asarray([position[v] for v in values], dtype=np.int64), classes


def number(table: Table, row: int, column: str) -> float:
    """The cell as a finite float, or an error naming line and column."""
    cell = table.rows[row][table.columns.index(column)]
    try:
        value = float(cell)
    except ValueError:
        raise G2DError(f"{table.where(row, column)}: expected a number, got {cell!r}") from None
    if not math.isfinite(value):
        raise G2DError(f"{table.where(row, column)}: expected a finite number, got {cell!r}")
    return value


def read_targets(table: Table) -> np.ndarray:
    return np.asarray([number(table, row, "target") for row in range(len(table.rows))], dtype=np.float64)


def read_split(table: Table, config: DatasetConfig) -> dict[str, np.ndarray]:
    """Row indices per split from the ``split`` column; every split must have rows."""
    if config.folds:
        raise G2DError(f"config key dataset.folds: {table.path} has a 'split' column, which fixes the test rows; "
                       "remove the column to cross-validate")
    values = table.column("split")
    for row, value in enumerate(values):
        if value not in SPLITS:
            raise G2DError(f"{table.where(row, 'split')}: {value!r} is not one of {', '.join(SPLITS)}")
    index = {split: np.asarray([r for r, v in enumerate(values) if v == split], dtype=np.int64) for split in SPLITS}
    for split, rows in index.items():
        if len(rows) == 0:
            raise G2DError(f"{table.path} column 'split': no row is marked {split!r}")
    return index


def tabular_values(table: Table, columns: list[str], train: np.ndarray) -> np.ndarray:
    """The numeric columns as ``[N, d]`` float32, standardized with the training rows."""
    values = np.asarray([[number(table, row, c) for c in columns] for row in range(len(table.rows))])
    mean, std = standardization(values[train])
    return ((values - mean) / std).astype(np.float32)


def resolve(table: Table, row: int, column: str) -> Path:
    cell = table.rows[row][table.columns.index(column)]
    if not cell:
        raise G2DError(f"{table.where(row, column)}: empty file path")
    return table.path.parent / cell


def file_kind(table: Table, column: str) -> str:
    """``image``, ``audio`` or ``npy`` from the file extensions, which must agree down the column."""
    kinds = set()
    for row in range(len(table.rows)):
        suffix = resolve(table, row, column).suffix.lower()
        if suffix not in FILE_KINDS:
            raise G2DError(f"{table.where(row, column)}: extension {suffix!r} is not one of {', '.join(FILE_KINDS)} "
                           f"(tabular columns are named '<modality>:<feature>')")
        kinds.add(FILE_KINDS[suffix])
        if len(kinds) > 1:
            raise G2DError(f"{table.where(row, column)}: mixes {' and '.join(sorted(kinds))} files in one column")
    return kinds.pop()


def read_images(table: Table, column: str, paths: list[Path], options: dict[str, Any]) -> np.ndarray:
    size = options["image_size"]
    images = []
    for row, path in enumerate(paths):
        try:
            images.append(read_image(path, (size, size), options["image_mode"]))
        except G2DError as exc:
            raise G2DError(f"{table.where(row, column)}: {exc}") from exc
    return np.stack(images)


def check_text_columns(table: Table, groups: dict[str, list[str]], options: dict[str, Any]) -> None:
    """Each of ``text_columns`` must be a plain column, and text needs a tokenizer folder."""
    for column in options["text_columns"]:
        if groups.get(column) != [column]:
            raise G2DError(f"config key dataset.options.text_columns: {table.path} has no plain column {column!r}")
    if options["text_columns"] and not options["tokenizer"]:
        raise G2DError("config key dataset.options.tokenizer: text columns need the folder of a saved tokenizer "
                       "(the hf encoder's model folder)")


def tokenize(table: Table, column: str, options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``[N, T]`` (int64) and mask (True = real token) of a text column, padded to the longest row."""
    from g2d.data.hf_local import load_tokenizer

    tokenizer = load_tokenizer(options["tokenizer"], "config key dataset.options.tokenizer")
    try:
        encoded = tokenizer(table.column(column), padding="longest", truncation=True,
                            max_length=options["max_tokens"], return_tensors="np")
    except ValueError as exc:  # e.g. a tokenizer without a padding token
        raise G2DError(f"config key dataset.options.tokenizer: cannot tokenize column {column!r} of {table.path} "
                       f"({str(exc).splitlines()[0]})") from exc
    return encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(bool)


def read_waveforms(table: Table, column: str, paths: list[Path], options: dict[str, Any]) -> np.ndarray:
    """Clips ``[N, audio_seconds * sample_rate]`` (float32), resampled, cropped or zero-padded."""
    length = int(round(options["audio_seconds"] * options["sample_rate"]))
    waves = np.zeros((len(paths), length), dtype=np.float32)
    for row, path in enumerate(paths):
        try:
            wave, source_rate = read_wav(path)
        except G2DError as exc:
            raise G2DError(f"{table.where(row, column)}: {exc}") from exc
        wave = resample(wave, source_rate, options["sample_rate"])[:length]
        waves[row, : len(wave)] = wave
    return waves


def read_spectrograms(
    table: Table, column: str, paths: list[Path], options: dict[str, Any], train: np.ndarray
) -> np.ndarray:
    """Log-magnitude spectrograms ``[N, 1, n_fft // 2 + 1, frames]`` of fixed-length clips, standardized."""
    rate, n_fft, hop = options["sample_rate"], options["n_fft"], options["hop"]
    length = int(round(options["audio_seconds"] * rate))
    if length < n_fft:
        raise G2DError(f"config key dataset.options.n_fft: {n_fft} is longer than a clip of audio_seconds * "
                       f"sample_rate = {length} samples")
    waves = read_waveforms(table, column, paths, options)
    spectrograms = log_spectrogram(torch.from_numpy(waves), n_fft, hop).numpy()
    mean, std = float(spectrograms[train].mean()), float(spectrograms[train].std()) or 1.0
    return ((spectrograms - mean) / std).astype(np.float32)[:, None]


def read_arrays(
    table: Table, column: str, paths: list[Path], train: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Vectors ``[N, d]``, or sequences zero-padded to ``[N, T_max, d]`` with their mask; standardized."""
    arrays = []
    for row, path in enumerate(paths):
        where = table.where(row, column)
        if not path.is_file():
            raise G2DError(f"{where}: {path}: file not found")
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise G2DError(f"{where}: {path}: cannot read .npy file ({exc})") from exc
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_) or array.ndim not in (1, 2):
            raise G2DError(f"{where}: {path}: expected a numeric 1-D vector or 2-D (T, d) sequence, "
                           f"got {array.dtype} {array.shape}")
        if not np.all(np.isfinite(array)):
            raise G2DError(f"{where}: {path}: contains NaN or infinite values")
        if len(array) == 0:
            raise G2DError(f"{where}: {path}: empty array")
        first = arrays[0] if arrays else array
        if array.ndim != first.ndim or array.shape[-1] != first.shape[-1]:
            raise G2DError(f"{where}: {path}: shape {array.shape} does not match the column's first array "
                           f"{first.shape} (vectors: same length; sequences: same feature size)")
        arrays.append(array.astype(np.float64))
    if arrays[0].ndim == 1:
        values = np.stack(arrays)
        mean, std = standardization(values[train])
        return ((values - mean) / std).astype(np.float32), None
    steps = max(len(a) for a in arrays)
    values = np.zeros((len(arrays), steps, arrays[0].shape[1]))
    mask = np.zeros((len(arrays), steps), dtype=bool)
    for row, array in enumerate(arrays):
        values[row, : len(array)] = array
        mask[row, : len(array)] = True
    mean, std = standardization(values[train][mask[train]])
    values = np.where(mask[:, :, None], (values - mean) / std, 0.0)
    return values.astype(np.float32), mask

