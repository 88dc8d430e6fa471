"""The in-memory multimodal dataset every loader returns, and the batch iterator over it.

Datasets are decoded once into arrays; a batch is a dict keyed by modality name plus
``"label"``, cut from those arrays by index, so no per-item Python runs in an epoch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from g2d.config import DatasetConfig, parse_settings
from g2d.data.commands import PrepareCommand
from g2d.errors import G2DError
from g2d.registry import Registry

SPLITS = ("train", "val", "test")
KINDS = ("vector", "image", "video", "sequence", "tokens")
MASKED_KINDS = ("sequence", "tokens")


def mask_key(modality: str) -> str:
    """The split key of a sequence modality's padding mask (modality names never contain '.')."""
    return f"{modality}.mask"


@dataclass
class ModalitySpec:
    """What an encoder needs to know about one modality's input.

    ``kind`` is ``"vector"`` (shape ``(d,)``), ``"image"`` (``(C, H, W)``; spectrograms
    are 1-channel images), ``"video"`` (``(T, C, H, W)``) or ``"sequence"`` (``(T, d)``,
    padded feature sequences; the split then holds a boolean mask ``[N, T]`` under
    ``mask_key(modality)``, True for real steps) or ``"tokens"`` (``(T,)`` integer token ids
    from a tokenizer, padded, with the same mask: True for real tokens; kept integer on the
    device, for the ``hf`` encoder). ``scale`` multiplies the stored values
    after conversion to float (1/255 for uint8 pixels), so data can stay compact in memory.
    ``mean`` and ``std`` (per channel, set by ``dataset.normalize``) then standardise the
    scaled values channel by channel, as the references' image transforms do.
    """

    kind: str
    shape: tuple[int, ...]
    scale: float = 1.0
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None

    def as_input(self, value: torch.Tensor) -> torch.Tensor:
        """Stored values as the model sees them: float, scaled, and standardised per channel when set."""
        value = value.float()
        if self.scale != 1.0:
            value = value * self.scale
        if self.mean is not None and self.std is not None:
            mean, std = channel_statistics(self.mean, self.std, value.device)
            value = (value - mean) / std
        return value


@functools.lru_cache(maxsize=16)
def channel_statistics(mean: tuple[float, ...], std: tuple[float, ...],
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` as float32 ``[C, 1, 1]`` tensors on ``device`` (channels sit third from the end
    in images and videos), made once per device rather than copied to it with every batch."""
    return (torch.tensor(mean, device=device).view(-1, 1, 1), torch.tensor(std, device=device).view(-1, 1, 1))


@dataclass
class MultimodalData:
    """A whole dataset in memory: ``splits[split][modality or "label"]`` is a tensor.

    Labels are int64 class indices for classification and float targets for regression.
    Regression targets are stored scaled to [0, 1] (Eq. 1's sigmoid output);
    ``target_offset + target_span * y`` gives them back on the dataset's own scale, which
    is where MAPE is measured. ``deterministic`` is False when training rows are transformed
    at random (augmentation): a row's teacher outputs then change between epochs, so the
    fast path must not cache them. ``redraw(epoch)``, when set, returns that epoch's training
    arrays (the same keys and shapes as ``splits["train"]``, drawn anew, seeded by the epoch).
    """

    name: str
    task: str
    num_classes: int
    modalities: dict[str, ModalitySpec]
    splits: dict[str, dict[str, torch.Tensor]]
    class_names: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    target_offset: float = 0.0
    target_span: float = 1.0
    deterministic: bool = True
    redraw: Optional[Callable[[int], dict[str, torch.Tensor]]] = None

    def __post_init__(self) -> None:
        if self.task not in ("classification", "regression"):
            raise G2DError(f"dataset {self.name}: task must be classification or regression, got {self.task!r}")
        for split in SPLITS:
            if split not in self.splits:
                raise G2DError(f"dataset {self.name}: missing split {split!r}")
            tensors = self.splits[split]
            sizes = {key: len(value) for key, value in tensors.items()}
            if len(set(sizes.values())) != 1:
                raise G2DError(f"dataset {self.name}: split {split} has arrays of different lengths {sizes}")
            for modality, spec in self.modalities.items():
                if spec.kind not in KINDS:
                    raise G2DError(f"dataset {self.name}: modality {modality!r} has unknown kind {spec.kind!r}")
                if spec.kind in MASKED_KINDS:
                    mask = tensors.get(mask_key(modality))
                    if mask is None or mask.dtype != torch.bool or tuple(mask.shape[1:]) != tuple(spec.shape[:1]):
                        raise G2DError(
                            f"dataset {self.name}: split {split} {spec.kind} modality {modality!r} needs a boolean "
                            f"mask {mask_key(modality)!r} of shape [N, {spec.shape[0]}]"
                        )
                if modality not in tensors:
                    raise G2DError(f"dataset {self.name}: split {split} lacks modality {modality!r}")
                if tuple(tensors[modality].shape[1:]) != tuple(spec.shape):
                    raise G2DError(
                        f"dataset {self.name}: split {split} modality {modality!r} has per-sample shape "
                        f"{tuple(tensors[modality].shape[1:])}, expected {tuple(spec.shape)}"
                    )

    def size(self, split: str) -> int:
        return len(self.splits[split]["label"])

    def unscale_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Regression targets or predictions from the [0, 1] training scale back to the dataset's scale."""
        return self.target_offset + self.target_span * targets

    def select(self, modalities: list[str]) -> "MultimodalData":
        """The same data restricted to ``modalities`` (in that order); unknown names are an error."""
        unknown = [m for m in modalities if m not in self.modalities]
        if unknown:
            raise G2DError(
                f"dataset {self.name}: unknown modality {unknown[0]!r} (dataset.modalities); "
                f"available: {', '.join(self.modalities)}"
            )
        keep = list(modalities) + [mask_key(m) for m in modalities if self.modalities[m].kind in MASKED_KINDS]
        keep.append("label")
        return MultimodalData(
            name=self.name,
            task=self.task,
            num_classes=self.num_classes,
            modalities={m: self.modalities[m] for m in modalities},
            splits={s: {k: t[k] for k in keep} for s, t in self.splits.items()},
            class_names=self.class_names,
            notes=self.notes,
            target_offset=self.target_offset,
            target_span=self.target_span,
            deterministic=self.deterministic,
            redraw=None if self.redraw is None else lambda epoch: {k: v for k, v in self.redraw(epoch).items() if k in keep},
        )


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, held_out) with ``fraction`` of each class held out, deterministically."""
    if not 0.0 < fraction < 1.0:
        raise G2DError(f"split fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for value in np.unique(labels):
        idx = np.flatnonzero(labels == value)
        rng.shuffle(idx)
        held.append(idx[: max(1, int(round(fraction * len(idx))))])
    held_out = np.sort(np.concatenate(held))
    rest = np.setdiff1d(np.arange(len(labels)), held_out)
    return rest, held_out


def random_split(size: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(size)`` into (rest, held_out) for regression targets, deterministically."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(size)
    cut = max(1, int(round(fraction * size)))
    return np.sort(order[cut:]), np.sort(order[:cut])


def standardization(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std of training rows ``[N, d]``; a constant column gets std 1 (left centred)."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std == 0] = 1.0
    return mean, std


def target_scale(train_targets: np.ndarray, source: str) -> tuple[float, float]:
    """``(offset, span)`` mapping the training targets onto [0, 1] (min-max); ``source`` names them in errors."""
    low, high = float(train_targets.min()), float(train_targets.max())
    if not high > low:
        raise G2DError(f"{source}: every training target equals {low}; a regression target needs a spread")
    return low, high - low


def kfold_partition(size: int, folds: int, seed: int, labels: np.ndarray | None = None) -> list[np.ndarray]:
    """A seeded partition of ``range(size)`` into ``folds`` disjoint folds covering every row.

    With ``labels`` each class is shuffled and dealt round-robin, continuing the count
    across classes, so every fold holds each class in proportion and fold sizes differ by
    at most one.
    """
    rng = np.random.default_rng(seed)
    assignment = np.empty(size, dtype=np.int64)
    if labels is None:
        assignment[rng.permutation(size)] = np.arange(size) % folds
    else:
        dealt = 0
        for value in np.unique(labels):
            idx = np.flatnonzero(labels == value)
            rng.shuffle(idx)
            assignment[idx] = (dealt + np.arange(len(idx))) % folds
            dealt += len(idx)
    return [np.flatnonzero(assignment == fold) for fold in range(folds)]


def split_indices(config: DatasetConfig, size: int, labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Row indices of train/val/test from ``config``, stratified by ``labels`` when given and ``stratify`` is on.

    Test is the fixed ``test_fraction`` split, or fold ``fold`` of a ``folds``-fold partition;
    validation is then carved from the remaining rows, ``val_fraction`` of all rows, with
    ``split_seed + 1``, so changing the test fold never changes how validation is drawn.
    """
    if not config.stratify:
        labels = None
    if config.folds == 0:
        if config.fold != 0:
            raise G2DError(f"config key dataset.fold: {config.fold} needs dataset.folds (K >= 2 for K-fold splits)")
        if not 0.0 < config.test_fraction < 1.0:
            raise G2DError(f"config key dataset.test_fraction: must be in (0, 1), got {config.test_fraction}")
        if labels is not None:
            rest, test = stratified_split(labels, config.test_fraction, config.split_seed)
        else:
            rest, test = random_split(size, config.test_fraction, config.split_seed)
        rest_share = 1.0 - config.test_fraction
    else:
        if not 2 <= config.folds <= size:
            raise G2DError(f"config key dataset.folds: must be 0 (fixed split) or 2..{size} rows, got {config.folds}")
        if not 0 <= config.fold < config.folds:
            raise G2DError(f"config key dataset.fold: must be in 0..{config.folds - 1} for {config.folds} folds, "
                           f"got {config.fold}")
        test = kfold_partition(size, config.folds, config.split_seed, labels)[config.fold]
        rest = np.setdiff1d(np.arange(size), test)
        rest_share = len(rest) / size
    val_share = config.val_fraction / rest_share
    if not 0.0 < val_share < 1.0:
        raise G2DError(f"config key dataset.val_fraction: must be > 0 and leave training rows beside the test "
                       f"split ({1.0 - rest_share:.2f} of the rows), got {config.val_fraction}")
    if labels is not None:
        train_pos, val_pos = stratified_split(labels[rest], val_share, config.split_seed + 1)
    else:
        train_pos, val_pos = random_split(len(rest), val_share, config.split_seed + 1)
    return {"train": rest[train_pos], "val": rest[val_pos], "test": test}


class Batches:
    """Iterates over one split in batches of dicts, shuffled by a seeded generator per epoch.

    The order for epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees the same
    batches as an uninterrupted one.
    """

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise G2DError(f"trainer.batch_size must be >= 1, got {batch_size}")
        self.tensors = tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.size = len(next(iter(tensors.values())))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Full batches, plus the partial last one unless ``drop_last``; a one-row remainder is dropped
        after full batches (BatchNorm cannot train on a single row)."""
        full, rest = divmod(self.size, self.batch_size)
        if self.drop_last or (rest == 1 and full > 0):
            return full
        return full + (rest > 0)

    def order(self) -> torch.Tensor:
        """This epoch's row order: a permutation seeded by ``(seed, epoch)``, or 0..N-1 without shuffling."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            return torch.randperm(self.size, generator=generator)
        return torch.arange(self.size)

    def indices(self) -> Iterator[torch.Tensor]:
        """The row indices of each batch of this epoch, in order (what ``__iter__`` gathers)."""
        order = self.order()
        for start in range(0, min(len(self) * self.batch_size, self.size), self.batch_size):
            yield order[start : start + self.batch_size]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for index in self.indices():
            yield {key: value[index] for key, value in self.tensors.items()}


def to_device(batch: dict[str, torch.Tensor], data: MultimodalData, device: torch.device) -> dict[str, torch.Tensor]:
    """Move a batch to ``device`` and turn stored modality arrays into the float32 inputs the model sees (token ids stay integer)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        if key in data.modalities and data.modalities[key].kind != "tokens":
            value = data.modalities[key].as_input(value)
        out[key] = value
    return out


@dataclass
class NoOptions:
    """A dataset without ``dataset.options``."""


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset's facts, registered in the module that defines it (``DATASETS.register``).

    ``load(config, options)`` reads it, ``options`` being its ``Options`` dataclass filled from
    ``dataset.options`` (``Options=dict``: passed through unchecked, for a user's own factory). ``task``: ``classification`` or ``regression`` (None: the data decides).
    ``root``: what ``dataset.root`` must name ("" when the data is embedded). ``folds``: whether
    it takes ``dataset.folds`` (False for a fixed test split). ``prepare``: its ``g2d prepare``
    command, if any.
    """

    load: Callable[[DatasetConfig, Any], "MultimodalData"]
    task: str | None
    root: str = ""
    folds: bool = False
    Options: type = NoOptions
    prepare: PrepareCommand | None = None


# ``@DATASETS.register("name", task=..., ...)`` on the loader: ``dataset.name=name`` selects it. A loader
# shared by several datasets (``g2d.data.prepared``) is registered by applying the decorator to it.
DATASETS: Registry[DatasetRecord] = Registry("dataset", "dataset.name", DatasetRecord)


def dataset_options(config: DatasetConfig) -> Any:
    """``dataset.options`` checked against the dataset's ``Options``, then the facts the record alone
    can check (a root where one is needed, no folds on a fixed test split): nothing is read from disk."""
    record = DATASETS[config.name]
    if config.factory and config.name != "python":
        raise G2DError(f"config key dataset.factory: only dataset.name=python calls a factory (dataset.name is "
                       f"{config.name})")
    if record.Options is dict:  # free-form: handed as they are to a user's own code (dataset.name=python)
        options = dict(config.options)
    else:
        options = parse_settings(record.Options, dict(config.options), "dataset.options",
                                 f"an option of dataset {config.name}")
    if record.root and not config.root:
        raise G2DError(f"config key dataset.root: {config.name} needs {record.root}")
    if config.folds and not record.folds:
        raise G2DError(f"config key dataset.folds: {config.name} has a fixed test split; use 0")
    return options
