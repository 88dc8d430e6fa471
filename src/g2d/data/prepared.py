"""The prepared-dataset folder: what ``g2d prepare NAME`` writes and the loaders memory-map.

Layout (one folder per dataset)::

    DIR/prepare.json                 format, dataset, task, classes, modality specs, split sizes,
                                     every preparation setting, and skip counts
    DIR/skipped.csv                  one row per input item left out: split, item, reason
    DIR/{train,val,test}/<m>.npy     one array per modality, rows aligned with label.npy
    DIR/{train,val,test}/<m>.mask.npy  bool [N, T] for sequence and tokens modalities (True = real step)
    DIR/{train,val,test}/label.npy   int64 classes, or float32 regression targets (original units)

Arrays are plain ``.npy`` (no pickles); they are written through ``np.lib.format.open_memmap``
and read back memory-mapped, so a dataset larger than RAM trains without decoding media and
without being copied into memory: a batch only touches its own rows.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from g2d.config import DatasetConfig
from g2d.data.base import MASKED_KINDS, SPLITS, ModalitySpec, MultimodalData, mask_key
from g2d.errors import G2DError
from g2d.folders import BUILDING, check_target, mark, publish, recover, sibling

FORMAT = "g2d-prepared/1"
META = "prepare.json"
SKIPPED = "skipped.csv"
LABEL = "label"


def say(progress: bool, message: str) -> None:
    """Print a progress line to stderr when asked, keeping stdout clean."""
    if progress:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Print a warning line to stderr, e.g. for an input file that is skipped."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an output folder that is not an earlier prepared dataset (``g2d.folders``), or is one
    and overwrite is not set."""
    check_target(out, "prepared", "--out", overwrite)


def staging_dir(out: Path) -> Path:
    """A fresh hidden folder beside ``out``, marked as a prepared dataset, to build into; ``publish``
    renames it over ``out`` when complete. Folders a killed preparation left there are removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    recover(out)
    work = sibling(out, BUILDING)
    work.mkdir()
    mark(work, "prepared")
    return work


@dataclass
class SkipLog:
    """Input items left out of a preparation, with the reason; written to skipped.csv and counted."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, split: str, item: str, reason: str, loud: bool = True) -> None:
        if loud:
            warn(f"skipping {item} ({split}): {reason}")
        self.rows.append((split, item, reason))

    def counts(self) -> dict[str, Any]:
        """Totals per split and per reason kind (the text before the first ':')."""
        by_split: dict[str, int] = {}
        by_reason: dict[str, int] = {}
        for split, _, reason in self.rows:
            by_split[split] = by_split.get(split, 0) + 1
            kind = reason.split(":", 1)[0]
            by_reason[kind] = by_reason.get(kind, 0) + 1
        return {"total": len(self.rows), "by_split": by_split, "by_reason": by_reason, "list": SKIPPED}

    def write(self, path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(("split", "item", "reason"))
            writer.writerows(self.rows)


class PreparedWriter:
    """Builds a prepared folder in a staging directory; ``finish`` renames it into place.

    Use as a context manager: on any error the staging directory is removed and ``out``
    is left as it was.
    """

    def __init__(self, out: Path, overwrite: bool) -> None:
        self.out = Path(out)
        check_out(self.out, overwrite)
        self.work: Path | None = None

    def __enter__(self) -> "PreparedWriter":
        self.work = staging_dir(self.out)
        for split in SPLITS:
            (self.work / split).mkdir()
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if self.work is not None and self.work.exists():
            shutil.rmtree(self.work, ignore_errors=True)

    def path(self, split: str, key: str) -> Path:
        assert self.work is not None, "PreparedWriter used outside its with-block"
        return self.work / split / f"{key}.npy"

    def open(self, split: str, key: str, shape: tuple[int, ...], dtype: Any) -> np.memmap:
        """A writable memory-mapped ``.npy`` of the given shape, filled by the caller row by row."""
        return np.lib.format.open_memmap(self.path(split, key), mode="w+", dtype=dtype, shape=shape)

    def trim(self, split: str, key: str, rows: int, chunk: int = 256) -> None:
        """Cut a row-filled array down to its first ``rows`` rows (after skipped items), chunk by chunk."""
        path = self.path(split, key)
        full = np.load(path, mmap_mode="r", allow_pickle=False)
        if len(full) == rows:
            return
        cut = path.with_name(f"{key}.trim.npy")
        target = np.lib.format.open_memmap(cut, mode="w+", dtype=full.dtype, shape=(rows, *full.shape[1:]))
        for start in range(0, rows, chunk):
            target[start : start + chunk] = full[start : min(start + chunk, rows)]
        target.flush()
        del target, full
        os.replace(cut, path)

    def save(self, split: str, key: str, array: np.ndarray) -> None:
        np.save(self.path(split, key), np.ascontiguousarray(array), allow_pickle=False)

    def finish(self, meta: dict[str, Any], skipped: SkipLog) -> dict[str, Any]:
        """Write prepare.json and skipped.csv, move the folder into place; returns prepare.json's content."""
        assert self.work is not None
        meta = {"format": FORMAT, **meta}
        skipped.write(self.work / SKIPPED)
        (self.work / META).write_text(json.dumps(meta, indent=2) + "\n")
        publish(self.work, self.out)
        self.work = None
        return meta


def spec_entry(spec: ModalitySpec, dtype: Any) -> dict[str, Any]:
    """How a modality is recorded in prepare.json."""
    return {"kind": spec.kind, "shape": list(spec.shape), "scale": spec.scale, "dtype": np.dtype(dtype).name}


def map_items(function: Callable[[Any], Any], items: list[Any], workers: int) -> Iterator[Any]:
    """``function`` over ``items`` in order, in ``workers`` processes when more than one.

    Results come back in input order, so a preparation is identical for any worker count.
    ``function`` must be importable by name (a module-level function), as workers are spawned.
    """
    if workers < 1:
        raise G2DError(f"--workers must be >= 1, got {workers}")
    if workers == 1 or len(items) < 2:
        yield from map(function, items)
        return
    chunk = max(1, min(64, len(items) // (4 * workers)))
    # spawn, never fork: a child forked after torch (or PyAV) started its thread pools can inherit a lock
    # one of those threads held, and block on it forever (the suite hung so in 2 of 3 runs). A spawned
    # worker starts a fresh interpreter, at the cost of importing torch once per worker.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_single_thread) as pool:
        yield from pool.map(function, items, chunksize=chunk)


def _single_thread() -> None:
    """Worker processes each use one thread, so N workers use N cores and no more."""
    torch.set_num_threads(1)


def read_meta(root: Path, name: str) -> dict[str, Any]:
    """prepare.json of a prepared folder, checked to be this library's format for dataset ``name``."""
    path = root / META
    if not root.is_dir():
        raise G2DError(f"{root}: prepared {name} folder not found (run: g2d prepare {name} --root RAW --out {root})")
    if not path.is_file():
        raise G2DError(f"{path}: not found; {root} is not a prepared {name} folder (run: g2d prepare {name} ...)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise G2DError(f"{path}: cannot read ({error})") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise G2DError(f"{path}: not a {FORMAT} file")
    if meta.get("dataset") != name:
        raise G2DError(f"{path}: this folder holds dataset {meta.get('dataset')!r}, not {name!r} (dataset.name)")
    return meta


def load_array(path: Path, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Memory-map a required ``.npy`` (no pickles) and check its dtype and shape, naming the file."""
    if not path.is_file():
        raise G2DError(f"{path}: prepared file not found; re-run g2d prepare")
    try:
        array = np.load(path, mmap_mode="c", allow_pickle=False)
    except (ValueError, OSError) as error:
        raise G2DError(f"{path}: cannot read .npy file ({error})") from error
    if array.dtype != np.dtype(dtype) or tuple(array.shape) != tuple(shape):
        raise G2DError(f"{path}: expected {np.dtype(dtype).name} {tuple(shape)}, found {array.dtype.name} {array.shape}")
    return array


def check_val_fraction(meta: dict[str, Any], root: Path, requested: float, default: float) -> None:
    """The validation split is fixed when a folder is prepared; a config asking for another one is an error."""
    prepared = meta.get("val_fraction")
    if prepared is None and requested != default:
        raise G2DError(
            f"config key dataset.val_fraction: {root} uses the dataset's published validation split; "
            f"leave dataset.val_fraction at {default}"
        )
    if prepared is not None and abs(float(prepared) - requested) > 1e-12:
        raise G2DError(
            f"config key dataset.val_fraction: {root} was prepared with --val-fraction {prepared}, not {requested}; "
            "re-run g2d prepare with the fraction you want (or leave the key out)"
        )


def load_prepared_dataset(config: DatasetConfig, options: Any = None) -> MultimodalData:
    """The loader of a dataset record whose data is a folder written by ``g2d prepare <name>``, memory-mapped."""
    return load_prepared(config.root or "", config.name, config.val_fraction, DatasetConfig.val_fraction)


def load_prepared(root: str | Path, name: str, val_fraction: float | None = None, default: float = 0.1) -> MultimodalData:
    """Read a prepared folder as a MultimodalData whose arrays stay memory-mapped on disk.

    ``val_fraction`` (the config's ``dataset.val_fraction``) is checked against the folder's
    fixed validation split; ``default`` is that key's default value.
    """
    root = Path(root)
    meta = read_meta(root, name)
    if val_fraction is not None:
        check_val_fraction(meta, root, val_fraction, default)
    try:
        task = meta["task"]
        sizes = {split: int(meta["splits"][split]) for split in SPLITS}
        entries = meta["modalities"]
        specs = {m: ModalitySpec(e["kind"], tuple(e["shape"]), float(e["scale"])) for m, e in entries.items()}
        dtypes = {m: e["dtype"] for m, e in entries.items()}
        class_names = list(meta.get("class_names", []))
    except (KeyError, TypeError, ValueError) as error:
        raise G2DError(f"{root / META}: missing or malformed field ({error!r})") from error
    target = meta.get("target", {"offset": 0.0, "span": 1.0})
    splits: dict[str, dict[str, torch.Tensor]] = {}
    for split, count in sizes.items():
        folder = root / split
        tensors: dict[str, torch.Tensor] = {}
        for modality, spec in specs.items():
            tensors[modality] = torch.from_numpy(load_array(folder / f"{modality}.npy", dtypes[modality], (count, *spec.shape)))
            if spec.kind in MASKED_KINDS:
                mask = load_array(folder / f"{mask_key(modality)}.npy", np.bool_, (count, spec.shape[0]))
                tensors[mask_key(modality)] = torch.from_numpy(mask)
        if task == "classification":
            labels = load_array(folder / f"{LABEL}.npy", np.int64, (count,))
            if count and (labels.min() < 0 or labels.max() >= len(class_names)):
                raise G2DError(f"{folder / (LABEL + '.npy')}: labels outside 0..{len(class_names) - 1}")
            tensors["label"] = torch.from_numpy(labels)
        else:
            values = load_array(folder / f"{LABEL}.npy", np.float32, (count,))
            scaled = (values.astype(np.float64) - target["offset"]) / target["span"]
            tensors["label"] = torch.from_numpy(scaled.astype(np.float32))
        splits[split] = tensors
    return MultimodalData(
        name=name,
        task=task,
        num_classes=len(class_names) if task == "classification" else 1,
        modalities=specs,
        splits=splits,
        class_names=class_names,
        notes={"source": f"prepared folder {root}", **meta.get("notes", {})},
        target_offset=float(target["offset"]),
        target_span=float(target["span"]),
    )

