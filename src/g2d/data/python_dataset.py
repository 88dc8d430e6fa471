"""Your own ``torch.utils.data.Dataset``s (``dataset.name: python``), read into a ``MultimodalData``.

``dataset.factory: package.module:function`` is called with ``dataset.options`` as keyword
arguments and returns the three splits, either as ``(train, validation, test)`` or as a mapping
with the keys ``train``, ``validation`` (or ``val``), ``test`` and optionally ``deterministic``
(bool) and ``class_names``. Every item is a dict of tensors (or arrays, numbers): one per modality,
``<modality>.mask`` (bool ``[T]``) for a padded sequence or token modality, and ``label`` (an
integer class: classification) or ``target`` (a number: regression).

A modality's kind follows from its item shape: ``(d,)`` vector (integer ``(T,)`` with a mask:
tokens), ``(T, d)`` sequence (without a mask every step is real), ``(C, H, W)`` image,
``(T, C, H, W)`` video. Items are read once, under ``torch.manual_seed(dataset.split_seed)``. A
training item that reads differently twice (random augmentation), or ``deterministic: False``
from the factory, marks the data non-deterministic: the teacher cache stays off and the training
split is read anew for every epoch (``MultimodalData.redraw``, seeded by the epoch).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from g2d.config import DatasetConfig
from g2d.data.base import (
    DATASETS,
    MASKED_KINDS,
    ModalitySpec,
    MultimodalData,
    mask_key,
    target_scale,
)
from g2d.errors import G2DError

KEY = "config key dataset.factory"
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
KIND_BY_RANK = {1: "vector", 2: "sequence", 3: "image", 4: "video"}
PROBED_ITEMS = 8


def import_factory(text: str | None) -> Callable[..., Any]:
    """The function ``package.module:function`` names; a malformed string or a failed import is an error."""
    if not text:
        raise G2DError(f"{KEY}: dataset.name=python needs a factory, package.module:function")
    module_name, _, function_name = text.partition(":")
    if not module_name or not function_name or ":" in function_name:
        raise G2DError(f"{KEY}: {text!r} is not of the form package.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may fail in any way while it is imported
        raise G2DError(f"{KEY}: cannot import {module_name} ({type(exc).__name__}: {exc}; "
                       f"is its folder on PYTHONPATH?)") from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise G2DError(f"{KEY}: module {module_name} has no function {function_name!r}")
    return function


def call_factory(config: DatasetConfig) -> tuple[dict[str, Any], bool | None, list[str] | None]:
    """The factory's three datasets by split, its ``deterministic`` flag and ``class_names`` (None when not given)."""
    factory = import_factory(config.factory)
    try:
        made = factory(**config.options)
    except Exception as exc:  # the user's code
        raise G2DError(f"{KEY}: {config.factory} raised {type(exc).__name__}: {exc}") from exc
    if isinstance(made, Mapping):
        datasets = {}
        for split, names in SPLIT_NAMES.items():
            found = [made[name] for name in names if name in made]
            if len(found) != 1:
                raise G2DError(f"{KEY}: {config.factory} returned a mapping without exactly one of "
                               f"{' or '.join(repr(n) for n in names)}")
            datasets[split] = found[0]
        deterministic, class_names = made.get("deterministic"), made.get("class_names")
        if deterministic is not None and not isinstance(deterministic, bool):
            raise G2DError(f"{KEY}: {config.factory} returned deterministic={deterministic!r}, not true or false")
        if class_names is not None:
            class_names = [str(name) for name in class_names]
        return datasets, deterministic, class_names
    if isinstance(made, Sequence) and not isinstance(made, str) and len(made) == 3:
        return dict(zip(SPLIT_NAMES, made)), None, None
    raise G2DError(f"{KEY}: {config.factory} returned {type(made).__name__}; expected (train, validation, test) "
                   "datasets or a mapping with train, validation and test")


def as_tensor(value: Any, where: str) -> torch.Tensor:
    """One item field as a tensor (float64 becomes float32); anything torch cannot convert is an error."""
    try:
        tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    except Exception as exc:  # arbitrary user values
        raise G2DError(f"{KEY}: {where} is not a tensor ({type(value).__name__}: {exc})") from exc
    return tensor.float() if tensor.dtype == torch.float64 else tensor


def read_item(dataset: Any, index: int, where: str) -> dict[str, torch.Tensor]:
    """Item ``index`` as a dict of tensors."""
    try:
        item = dataset[index]
    except Exception as exc:  # the user's __getitem__
        raise G2DError(f"{KEY}: {where} item {index} could not be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(item, Mapping):
        raise G2DError(f"{KEY}: {where} item {index} is a {type(item).__name__}, expected a dict of modality tensors")
    return {str(key): as_tensor(value, f"{where} item {index} {key!r}") for key, value in item.items()}


def read_split(dataset: Any, split: str) -> dict[str, torch.Tensor]:
    """Every item of one split, stacked per key; items must agree on keys, shapes and dtypes."""
    try:
        size = len(dataset)
    except TypeError as exc:
        raise G2DError(f"{KEY}: the {split} split is a {type(dataset).__name__} without a length") from exc
    if size < 1:
        raise G2DError(f"{KEY}: the {split} split has no items")
    items = [read_item(dataset, index, split) for index in range(size)]
    first = items[0]
    for index, item in enumerate(items):
        if item.keys() != first.keys():
            raise G2DError(f"{KEY}: {split} item {index} has keys {sorted(item)}, item 0 has {sorted(first)}")
        for key, value in item.items():
            if value.shape != first[key].shape or value.dtype != first[key].dtype:
                raise G2DError(f"{KEY}: {split} item {index} {key!r} is {value.dtype} {tuple(value.shape)}, "
                               f"item 0 is {first[key].dtype} {tuple(first[key].shape)} (pad to one shape)")
    return {key: torch.stack([item[key] for item in items]) for key in first}


def modality_specs(train: dict[str, torch.Tensor]) -> dict[str, ModalitySpec]:
    """Each modality's kind and per-item shape, from the training split's arrays."""
    specs = {}
    for key, value in train.items():
        if key.endswith(".mask") and key.removesuffix(".mask") not in train:
            raise G2DError(f"{KEY}: items carry {key!r} but no modality {key.removesuffix('.mask')!r}")
        if key in ("label", "target") or key.endswith(".mask"):
            continue
        kind = KIND_BY_RANK.get(value.dim() - 1)
        if kind is None:
            raise G2DError(f"{KEY}: modality {key!r} has items of shape {tuple(value.shape[1:])}; expected (d,), "
                           "(T, d), (C, H, W) or (T, C, H, W)")
        if kind == "vector" and mask_key(key) in train and not value.is_floating_point():
            kind = "tokens"
        specs[key] = ModalitySpec(kind=kind, shape=tuple(value.shape[1:]))
    if not specs:
        raise G2DError(f"{KEY}: items hold no modality beside label/target")
    return specs


def complete_masks(split: str, arrays: dict[str, torch.Tensor], specs: dict[str, ModalitySpec]) -> None:
    """Give each sequence or token modality its mask (all steps real when the items carry none); check given masks."""
    for modality, spec in specs.items():
        key = mask_key(modality)
        if spec.kind not in MASKED_KINDS:
            if key in arrays:
                raise G2DError(f"{KEY}: {split} items carry {key!r}, but {modality!r} is a {spec.kind}, not a sequence")
            continue
        if key not in arrays:
            arrays[key] = torch.ones(arrays[modality].shape[:2], dtype=torch.bool)
        elif arrays[key].dtype != torch.bool or tuple(arrays[key].shape[1:]) != spec.shape[:1]:
            raise G2DError(f"{KEY}: {split} items' {key!r} must be bool of shape ({spec.shape[0]},), "
                           f"got {arrays[key].dtype} {tuple(arrays[key].shape[1:])}")


def reads_alike(dataset: Any, arrays: dict[str, torch.Tensor]) -> bool:
    """Whether the first training items read a second time equal the first reading (no random augmentation)."""
    for index in range(min(PROBED_ITEMS, len(dataset))):
        again = read_item(dataset, index, "train")
        if again.keys() != arrays.keys() or any(not torch.equal(v, arrays[k][index]) for k, v in again.items()):
            return False
    return True


@dataclass
class Layout:
    """What every split, and every redraw of the training split, must match: keys, modalities, task and target scale."""

    keys: set[str]
    specs: dict[str, ModalitySpec]
    task: str
    num_classes: int = 1
    target_offset: float = 0.0
    target_span: float = 1.0


def read_seeded(dataset: Any, split: str, seed: int) -> dict[str, torch.Tensor]:
    """Every item of a split, read under ``torch.manual_seed(seed)`` without touching the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return read_split(dataset, split)


def layout_of(splits: dict[str, dict[str, torch.Tensor]], class_names: list[str] | None) -> Layout:
    """The layout the training items set (the classes: ``class_names`` or up to the largest label of any split)."""
    train = splits["train"]
    targets = [key for key in ("label", "target") if key in train]
    if len(targets) != 1:
        raise G2DError(f"{KEY}: items need exactly one of 'label' (a class) or 'target' (a regression value), "
                       f"got keys {sorted(train)}")
    layout = Layout(keys=set(train), specs=modality_specs(train), task="classification")
    if targets == ["label"]:
        largest = max(int(arrays["label"].max()) for arrays in splits.values() if "label" in arrays)
        layout.num_classes = len(class_names) if class_names is not None else largest + 1
        return layout
    layout.task = "regression"
    if train["target"].dim() == 1 and train["target"].dtype != torch.bool:
        layout.target_offset, layout.target_span = target_scale(train["target"].double().numpy(),
                                                                f"{KEY}: train items' 'target'")
    return layout


def check_finite(split: str, arrays: dict[str, torch.Tensor]) -> None:
    """A NaN or infinity in the items is refused when they are read, not found as a non-finite loss after a
    teacher trained on them."""
    for key, value in arrays.items():
        if value.is_floating_point():
            bad = (~torch.isfinite(value)).flatten(1).any(1) if value.dim() > 1 else ~torch.isfinite(value)
            if bool(bad.any()):
                raise G2DError(f"{KEY}: {split} item {int(bad.nonzero()[0])} {key!r} holds a NaN or an infinity "
                               f"({int(bad.sum())} item(s) of {len(value)}); clean or drop them in the factory")


def finish(split: str, arrays: dict[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """Check one split against ``layout``, add missing masks, and store labels (int64) or scaled targets under ``label``."""
    if set(arrays) != layout.keys:
        raise G2DError(f"{KEY}: {split} items have keys {sorted(arrays)}, train items have {sorted(layout.keys)}")
    for modality, spec in layout.specs.items():
        if tuple(arrays[modality].shape[1:]) != spec.shape:
            raise G2DError(f"{KEY}: {split} items' {modality!r} has shape {tuple(arrays[modality].shape[1:])}, "
                           f"train items' {spec.shape}")
    complete_masks(split, arrays, layout.specs)
    check_finite(split, arrays)
    if layout.task == "classification":
        labels = arrays["label"]
        if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
            raise G2DError(f"{KEY}: {split} items' 'label' must be one integer class, got {labels.dtype} "
                           f"{tuple(labels.shape[1:])}")
        if int(labels.min()) < 0 or int(labels.max()) >= layout.num_classes:
            raise G2DError(f"{KEY}: {split} labels must lie in 0..{layout.num_classes - 1} ({layout.num_classes} "
                           f"classes), got {int(labels.min())}..{int(labels.max())}")
        arrays["label"] = labels.long()
        return arrays
    targets = arrays.pop("target")
    if targets.dim() != 1 or targets.dtype == torch.bool:
        raise G2DError(f"{KEY}: {split} items' 'target' must be one number, got shape {tuple(targets.shape[1:])}")
    arrays["label"] = ((targets.double() - layout.target_offset) / layout.target_span).float()
    return arrays


def epoch_seed(split_seed: int, epoch: int) -> int:
    """The seed of the training split's redraw for ``epoch`` (distinct from the load's ``split_seed``)."""
    return split_seed * 100_003 + epoch + 1


@DATASETS.register("python", task=None, Options=dict)
def load_python_dataset(config: DatasetConfig, options: Any = None) -> MultimodalData:
    """Call the factory, read every item once (seeded) and check the arrays: the dataset a run trains on.

    When the training items are random, ``redraw(epoch)`` reads them anew for each epoch, seeded by
    ``dataset.split_seed`` and the epoch, so augmentation differs between epochs and a resumed run
    sees the same draws as an uninterrupted one.
    """
    if config.folds:
        raise G2DError("config key dataset.folds: dataset.name=python takes its splits from the factory; use 0")
    if config.root:
        raise G2DError("config key dataset.root: dataset.name=python reads no folder; pass the factory's "
                       "arguments as dataset.options.<name>")
    datasets, deterministic, class_names = call_factory(config)
    splits = {split: read_seeded(dataset, split, config.split_seed) for split, dataset in datasets.items()}
    if deterministic is None:
        with torch.random.fork_rng(devices=[]):
            deterministic = reads_alike(datasets["train"], splits["train"])
    layout = layout_of(splits, class_names)
    splits = {split: finish(split, arrays, layout) for split, arrays in splits.items()}

    def redraw(epoch: int) -> dict[str, torch.Tensor]:
        return finish("train", read_seeded(datasets["train"], "train", epoch_seed(config.split_seed, epoch)), layout)

    return MultimodalData(
        name="python", task=layout.task, num_classes=layout.num_classes, modalities=layout.specs, splits=splits,
        class_names=class_names or ([str(k) for k in range(layout.num_classes)] if layout.task == "classification" else []),
        notes={"factory": str(config.factory)}, target_offset=layout.target_offset, target_span=layout.target_span,
        deterministic=deterministic, redraw=None if deterministic else redraw,
    )
