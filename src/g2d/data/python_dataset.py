"""Your own ``torch.utils.data.Dataset``s (``dataset.name: python``), read once into a ``MultimodalData``.

``dataset.factory: package.module:function`` is called with ``dataset.options`` as keyword
arguments and returns the three splits, either as ``(train, validation, test)`` or as a mapping
with the keys ``train``, ``validation`` (or ``val``), ``test`` and optionally ``deterministic``
(bool) and ``class_names``. Every item is a dict of tensors (or arrays, numbers): one per modality,
``<modality>.mask`` (bool ``[T]``) for a padded sequence or token modality, and ``label`` (an
integer class: classification) or ``target`` (a number: regression).

A modality's kind follows from its item shape: ``(d,)`` vector (integer ``(T,)`` with a mask:
tokens), ``(T, d)`` sequence (without a mask every step is real), ``(C, H, W)`` image,
``(T, C, H, W)`` video. Items are read once, under ``torch.manual_seed(dataset.split_seed)``; a
training item that reads differently twice (random augmentation), or ``deterministic: False``
from the factory, marks the data non-deterministic, which keeps the teacher cache off.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np
import torch

from g2d.config import DatasetConfig
from g2d.data.base import MASKED_KINDS, ModalitySpec, MultimodalData, mask_key, target_scale
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
        if any(not torch.equal(value, arrays[key][index]) for key, value in again.items()):
            return False
    return True


def load_python_dataset(config: DatasetConfig) -> MultimodalData:
    """Call the factory, read every item once (seeded) and check the arrays: the dataset a run trains on."""
    if config.folds:
        raise G2DError("config key dataset.folds: dataset.name=python takes its splits from the factory; use 0")
    if config.root:
        raise G2DError("config key dataset.root: dataset.name=python reads no folder; pass the factory's "
                       "arguments as dataset.options.<name>")
    datasets, deterministic, class_names = call_factory(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.split_seed)
        splits = {split: read_split(dataset, split) for split, dataset in datasets.items()}
        if deterministic is None:
            deterministic = reads_alike(datasets["train"], splits["train"])
    train = splits["train"]
    targets = [key for key in ("label", "target") if key in train]
    if len(targets) != 1:
        raise G2DError(f"{KEY}: items need exactly one of 'label' (a class) or 'target' (a regression value), "
                       f"got keys {sorted(train)}")
    specs = modality_specs(train)
    keys = set(train)
    for split, arrays in splits.items():
        if set(arrays) != keys:
            raise G2DError(f"{KEY}: {split} items have keys {sorted(arrays)}, train items have {sorted(keys)}")
        for modality in specs:
            if arrays[modality].shape[1:] != train[modality].shape[1:]:
                raise G2DError(f"{KEY}: {split} items' {modality!r} has shape {tuple(arrays[modality].shape[1:])}, "
                               f"train items' {tuple(train[modality].shape[1:])}")
        complete_masks(split, arrays, specs)
    if targets == ["label"]:
        return classification(config, splits, specs, class_names, deterministic)
    return regression(config, splits, specs, deterministic)


def classification(config: DatasetConfig, splits: dict[str, dict[str, torch.Tensor]], specs: dict[str, ModalitySpec],
                   class_names: list[str] | None, deterministic: bool) -> MultimodalData:
    """Integer labels 0..K-1; K from ``class_names`` or the largest label."""
    for split, arrays in splits.items():
        labels = arrays["label"]
        if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
            raise G2DError(f"{KEY}: {split} items' 'label' must be one integer class, got {labels.dtype} "
                           f"{tuple(labels.shape[1:])}")
        arrays["label"] = labels.long()
    largest = max(int(arrays["label"].max()) for arrays in splits.values())
    smallest = min(int(arrays["label"].min()) for arrays in splits.values())
    names = class_names if class_names is not None else [str(k) for k in range(largest + 1)]
    if smallest < 0 or largest >= len(names):
        raise G2DError(f"{KEY}: labels must lie in 0..{len(names) - 1} ({len(names)} classes), "
                       f"got {smallest}..{largest}")
    return MultimodalData(name="python", task="classification", num_classes=len(names), modalities=specs,
                          splits=splits, class_names=names, notes={"factory": str(config.factory)},
                          deterministic=deterministic)


def regression(config: DatasetConfig, splits: dict[str, dict[str, torch.Tensor]], specs: dict[str, ModalitySpec],
               deterministic: bool) -> MultimodalData:
    """Targets scaled to [0, 1] by the training split's min and max (Eq. 1's sigmoid output)."""
    for split, arrays in splits.items():
        targets = arrays.pop("target")
        if targets.dim() != 1 or targets.dtype == torch.bool:
            raise G2DError(f"{KEY}: {split} items' 'target' must be one number, got shape {tuple(targets.shape[1:])}")
        arrays["label"] = targets.float()
    offset, span = target_scale(splits["train"]["label"].double().numpy(), f"{KEY}: train items' 'target'")
    for arrays in splits.values():
        arrays["label"] = ((arrays["label"].double() - offset) / span).float()
    return MultimodalData(name="python", task="regression", num_classes=1, modalities=specs, splits=splits,
                          notes={"factory": str(config.factory)}, target_offset=offset, target_span=span,
                          deterministic=deterministic)
