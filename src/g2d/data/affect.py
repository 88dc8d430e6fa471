"""UR-Funny and IEMOCAP from the pickled feature files MultiBench and the CMU MulT code publish.

Those files (``humor.pkl``; ``iemocap_data.pkl``) are pickles of
``{"train" | "valid" | "test": {"text": (N, T, dt), "audio": (N, T, da), "vision": (N, T, dv),
"labels": ..., "id": ...}}``: per-word GloVe, COVAREP and OpenFace/Facet features, word-aligned
and zero-padded at the front. Unpickling can run code chosen by the file, so
``prepare_affect`` reads one only when the user passes ``trust_pickle`` (``--trust-pickle``),
through an unpickler that admits nothing but numpy arrays, and writes a prepared folder of
plain ``.npy`` files that training reads with ``allow_pickle=False``.

Sequences follow MultiBench's ``get_dataloader(max_pad=True)``: a row whose text is all zeros is
dropped; a row starts at its first non-zero text step (aligned files) or, with ``unaligned``, each
modality at its own first non-zero step; at most ``max_len`` steps are kept (50, MultiBench's
``max_seq_len``); -inf and other non-finite values become 0. Each modality is stored left-aligned,
padded with zeros, with a bool mask (True = real step).
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from g2d.data.base import DATASETS, ModalitySpec, mask_key
from g2d.data.commands import PrepareCommand, common, common_arguments, describe_splits
from g2d.data.prepared import (
    LABEL,
    PreparedWriter,
    SkipLog,
    load_prepared_dataset,
    say,
    spec_entry,
    warn,
)
from g2d.errors import G2DError

MODALITIES = ("text", "audio", "vision")
SPLIT_KEYS = {"train": ("train",), "val": ("valid", "val", "dev"), "test": ("test",)}
MAX_LEN = 50
# Each MultiBench/MulT feature pickle g2d prepares: its file name, classes and how its labels are read.
SOURCES = {
    "urfunny": {
        "file": "humor.pkl",
        "class_names": ["not humorous", "humorous"],
        "label_rule": "label > 0 is humorous (MultiBench's humor labels are 0/1)",
    },
    "iemocap": {
        "file": "iemocap_data.pkl",
        "class_names": ["neutral", "happy", "sad", "angry"],
        "label_rule": (
            "MulT's (N, 4, 2) labels: the class is the one emotion whose second entry is 1, as MultiBench reads "
            "them (rows with none or several are skipped); integer (N,) labels are class indices"
        ),
    },
}
PICKLE_REFUSED = (
    "{path} is a pickle, and unpickling runs whatever code the file names; g2d reads it only when you pass "
    "--trust-pickle (do so only for the file you downloaded from MultiBench or CMU). Training never reads "
    "pickles: prepare writes plain .npy files."
)
NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, strings and numpy arrays and refuses every other class."""

    def __init__(self, handle: Any, path: Path) -> None:
        super().__init__(handle, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in NUMPY_GLOBALS:
            raise G2DError(f"{self.path}: the pickle asks for {module}.{name}; a feature file needs only numpy arrays, refusing")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core.") :]
        return super().find_class(module, name)


def read_feature_pickle(path: Path, trust_pickle: bool) -> dict:
    """Unpickle a MultiBench/MulT feature file, only when trusted and only numpy content."""
    if not path.is_file():
        raise G2DError(f"{path}: feature pickle not found")
    if not trust_pickle:
        raise G2DError(PICKLE_REFUSED.format(path=path))
    try:
        with path.open("rb") as handle:
            data = NumpyOnlyUnpickler(handle, path).load()
    except G2DError:
        raise
    except Exception as error:  # a corrupt pickle can fail in many ways
        raise G2DError(f"{path}: cannot unpickle ({type(error).__name__}: {error})") from error
    if not isinstance(data, dict):
        raise G2DError(f"{path}: expected a dict with train/valid/test, found {type(data).__name__}")
    return data


def split_table(data: dict, path: Path, split: str) -> dict:
    """The split's dict (``valid``/``val``/``dev`` for validation), with all three modalities and labels."""
    for key in SPLIT_KEYS[split]:
        if key in data:
            table = data[key]
            break
    else:
        raise G2DError(f"{path}: no {'/'.join(SPLIT_KEYS[split])!r} split (keys: {', '.join(map(str, data))})")
    if not isinstance(table, dict):
        raise G2DError(f"{path}: split {key!r} is a {type(table).__name__}, expected a dict")
    for field in (*MODALITIES, "labels"):
        if field not in table:
            raise G2DError(f"{path}: split {key!r} has no {field!r} array (keys: {', '.join(map(str, table))})")
        if not isinstance(table[field], np.ndarray):
            raise G2DError(f"{path}: split {key!r} field {field!r} is a {type(table[field]).__name__}, expected an array")
    count = len(table["labels"])
    for modality in MODALITIES:
        array = table[modality]
        if array.ndim != 3 or len(array) != count or not np.issubdtype(array.dtype, np.number):
            raise G2DError(f"{path}: split {key!r} {modality!r} must be numeric (N={count}, T, d), got {array.dtype} {array.shape}")
    return table


def class_labels(name: str, labels: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Class index per row and which rows have a usable label.

    UR-Funny: label > 0 is humorous (MultiBench's humor labels are 0/1). IEMOCAP: MulT's
    (N, 4, 2) one-hot pairs, the class being the one emotion whose second entry is 1 (as
    MultiBench reads them); rows with no or several such emotions are not usable. Integer
    (N,) labels are taken as class indices.
    """
    count = len(labels)
    if name == "iemocap" and labels.ndim == 3 and labels.shape[1:] == (4, 2):
        active = labels[:, :, 1] == 1
        usable = active.sum(axis=1) == 1
        return np.where(usable, active.argmax(axis=1), 0).astype(np.int64), usable
    flat = labels.reshape(count, -1)
    if flat.shape[1] != 1:
        raise G2DError(f"{path}: labels of shape {labels.shape} are not one value per row")
    values = flat[:, 0].astype(np.float64)
    usable = np.isfinite(values)
    if name == "urfunny":
        return (values > 0).astype(np.int64), usable
    classes = len(SOURCES[name]["class_names"])
    usable &= (values == np.round(values)) & (values >= 0) & (values < classes)
    return np.where(usable, values, 0).astype(np.int64), usable


def first_nonzero_step(array: np.ndarray) -> np.ndarray:
    """Per row, the first time step with a non-zero feature, or -1 when the row is all zeros."""
    nonzero = np.any(array != 0, axis=2)
    return np.where(nonzero.any(axis=1), nonzero.argmax(axis=1), -1)


def prepare_affect(
    name: str,
    root: Path,
    out: Path,
    trust_pickle: bool = False,
    max_len: int = MAX_LEN,
    unaligned: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Write a prepared ``urfunny`` or ``iemocap`` folder from a feature pickle (``root``: the file or its folder)."""
    if name not in SOURCES:
        raise G2DError(f"prepare_affect: unknown dataset {name!r} (one of {', '.join(SOURCES)})")
    root, out = Path(root), Path(out)
    path = root / SOURCES[name]["file"] if root.is_dir() else root
    if max_len < 1:
        raise G2DError(f"--max-len must be >= 1, got {max_len}")
    data = read_feature_pickle(path, trust_pickle)
    tables = {split: split_table(data, path, split) for split in SPLIT_KEYS}
    steps = {m: min(max_len, tables["train"][m].shape[1]) for m in MODALITIES}
    dims = {m: tables["train"][m].shape[2] for m in MODALITIES}
    for split, table in tables.items():
        for modality in MODALITIES:
            if table[modality].shape[2] != dims[modality]:
                raise G2DError(f"{path}: {split} {modality!r} has {table[modality].shape[2]} features, train {dims[modality]}")
        lengths = {table[m].shape[1] for m in MODALITIES}
        if not unaligned and len(lengths) > 1:
            raise G2DError(f"{path}: modalities have different lengths {sorted(lengths)}; pass --unaligned")

    class_names = SOURCES[name]["class_names"]
    specs = {m: ModalitySpec(kind="sequence", shape=(steps[m], dims[m])) for m in MODALITIES}
    skipped = SkipLog()
    nonfinite = {m: 0 for m in MODALITIES}
    counts: dict[str, Any] = {}
    with PreparedWriter(out, overwrite) as writer:
        for split, table in tables.items():
            labels, usable = class_labels(name, np.asarray(table["labels"]), path)
            starts = {m: first_nonzero_step(table[m]) for m in MODALITIES}
            if not unaligned:
                starts = {m: starts["text"] for m in MODALITIES}
            ids = table.get("id")
            keep = []
            for row in range(len(labels)):
                item = str(ids[row]) if isinstance(ids, np.ndarray) and len(ids) == len(labels) else f"row {row}"
                empty = [m for m in MODALITIES if starts[m][row] < 0]
                if not usable[row]:
                    skipped.add(split, item, "no label: not exactly one class", loud=False)
                elif empty:
                    skipped.add(split, item, f"empty: {', '.join(empty)} all zeros (dropped as MultiBench does)", loud=False)
                else:
                    keep.append(row)
            if not keep:
                raise G2DError(f"{path}: no usable rows in split {split}")
            keep_rows = np.asarray(keep)
            for modality in MODALITIES:
                source = table[modality]
                values = writer.open(split, modality, (len(keep), *specs[modality].shape), np.float32)
                mask = np.zeros((len(keep), steps[modality]), dtype=bool)
                for slot, row in enumerate(keep_rows):
                    sequence = np.asarray(source[row, starts[modality][row] :][: steps[modality]], dtype=np.float64)
                    bad = ~np.isfinite(sequence)
                    nonfinite[modality] += int(bad.sum())
                    values[slot, : len(sequence)] = np.where(bad, 0.0, sequence)
                    mask[slot, : len(sequence)] = True
                values.flush()
                del values
                writer.save(split, mask_key(modality), mask)
            split_labels = labels[keep_rows]
            writer.save(split, LABEL, split_labels)
            counts[split] = {"rows": len(keep), "per_class": np.bincount(split_labels, minlength=len(class_names)).tolist()}
            say(progress, f"{name}: {split}: {len(keep)} rows kept of {len(labels)}")
        if any(nonfinite.values()):
            warn(f"{path}: non-finite feature values set to 0: {nonfinite}")
        meta = {
            "dataset": name,
            "task": "classification",
            "class_names": class_names,
            "modalities": {m: spec_entry(specs[m], np.float32) for m in MODALITIES},
            "splits": {split: counts[split]["rows"] for split in tables},
            "sources": {"pickle": str(path)},
            "val_fraction": None,
            "settings": {"max_len": max_len, "unaligned": unaligned},
            "sequence_rule": (
                "rows whose text is all zeros are dropped; each row starts at its first non-zero "
                + ("step per modality" if unaligned else "text step (all modalities)")
                + f"; the first {max_len} steps from there are kept, left-aligned, zero-padded, mask True on real steps"
            ),
            "label_rule": SOURCES[name]["label_rule"],
            "nonfinite_values_zeroed": nonfinite,
            "split_rule": "the file's own train / valid / test splits",
            "counts": counts,
            "skipped": skipped.counts(),
        }
        meta = writer.finish(meta, skipped)
    say(progress, f"{name}: wrote {out}")
    return meta


def affect_arguments(file_name: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        common_arguments(parser, f"{file_name} or the folder holding it")
        parser.add_argument("--trust-pickle", action="store_true", help="allow reading the pickle (only numpy content)")
        parser.add_argument("--max-len", type=int, default=50, help="time steps kept per sequence (default 50)")
        parser.add_argument("--unaligned", action="store_true", help="each modality starts at its own first step")

    return add


def run_affect(args: argparse.Namespace) -> dict:
    return prepare_affect(args.dataset, trust_pickle=args.trust_pickle, max_len=args.max_len,
                          unaligned=args.unaligned, **common(args))


for _name, _source in SOURCES.items():
    DATASETS.register(
        _name, task="classification", root=f"the folder written by g2d prepare {_name}",
        prepare=PrepareCommand(f"{_name} from a MultiBench/MulT feature pickle", affect_arguments(_source["file"]),
                               run_affect, describe_splits))(load_prepared_dataset)
