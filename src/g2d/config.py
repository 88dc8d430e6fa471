"""The experiment config: typed dataclasses, read from YAML and dotted ``key=value`` overrides.

OmegaConf merges the YAML file and the overrides onto the schema below, so a misspelt key
or a value of the wrong type is an error that names the key. Method hyperparameters are a
free-form mapping here because each method validates its own (see ``g2d.methods``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from g2d.errors import G2DError


@dataclass
class DatasetConfig:
    """Which data, where it lives, which modalities, and how validation/test are carved.

    ``options`` holds a loader's own settings (checked by that loader, which names the
    ``dataset.options.<key>`` at fault). ``folds: K`` (K >= 2) replaces the fixed test split
    by fold ``fold`` of a seeded K-fold partition (``split_seed``), for cross-validation on
    small datasets; validation is still carved from the remaining rows (``val_fraction``).
    ``augment``: random resized crops and horizontal flips of the video and 3-channel image modalities
    in training (``g2d.data.augment``), as the references' loaders do; the teacher cache turns off.
    """

    name: str = "mfeat"
    root: Optional[str] = None
    modalities: list[str] = field(default_factory=list)
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    folds: int = 0
    fold: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    augment: bool = False


@dataclass
class EncoderConfig:
    """One encoder and its settings; each encoder reads only the fields it names below.

    ``name``: ``auto`` (MLP for vectors, ResNet-18 for images/video, Transformer for
    sequences), ``mlp``, ``resnet18``, ``mobilenetv2`` or ``transformer`` (docs/encoders.md).
    ``width``: ResNet-18 channels of the first stage (64 in the paper; features are 8 * width).
    ``hidden``: MLP layer sizes. ``dropout``: MLP dropout after each hidden layer, and the
    Transformer's dropout inside each layer (attention weights and feedforward).
    ``width_mult``: MobileNetV2 width multiplier (features are 1280 * max(1, width_mult)).
    ``d_model``, ``layers``, ``heads``, ``feedforward``: the Transformer's width, depth,
    attention heads and feedforward size (the paper's UR-Funny setting: 768, 4, 8).
    ``kernel_size``: the Conv1d projection's kernel over time (1 = per-step, as MultiBench).
    ``positional``: ``sinusoidal`` (fixed encoding of each step's index among the real steps)
    or ``none``. ``pooling``: ``mean`` over real steps or ``last`` real step (MultiBench);
    for ``hf``, ``mean``, ``first`` (the first token, e.g. BERT's [CLS]) or ``pooler`` (the
    model's own pooled output).
    ``path``: the local folder of a Hugging Face ``transformers`` model (``name: hf``).
    ``weights``: a safetensors file (or a torch file of tensors, loaded with weights_only) whose
    tensors, those under ``weights_prefix`` with the prefix removed, replace the encoder's
    initial weights. ``freeze``: the encoder never trains (no gradients, eval mode);
    ``lr_scale``: its learning rate is ``optim.lr * lr_scale``. See docs/encoders.md.
    """

    name: str = "auto"
    width: int = 64
    hidden: list[int] = field(default_factory=lambda: [128])
    dropout: float = 0.0
    width_mult: float = 1.0
    d_model: int = 768
    layers: int = 4
    heads: int = 8
    feedforward: int = 2048
    kernel_size: int = 1
    positional: str = "sinusoidal"
    pooling: str = "mean"
    path: Optional[str] = None
    weights: Optional[str] = None
    weights_prefix: str = ""
    freeze: bool = False
    lr_scale: float = 1.0


@dataclass
class ModelConfig:
    """Fusion plus encoders; ``encoders.<modality>`` overrides ``encoder`` for that modality."""

    fusion: str = "late"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    encoders: dict[str, EncoderConfig] = field(default_factory=dict)

    def encoder_for(self, modality: str) -> EncoderConfig:
        return self.encoders.get(modality, self.encoder)


@dataclass
class AutoTauConfig:
    """The stopping rule of ``smp.tau: auto`` (``g2d.core.autotau``, docs/smp.md).

    A phase ends when its modality's validation score has not risen by more than ``min_delta``
    for ``patience`` epochs (null: 5 % of training, at least 2), or after ``max_share`` of
    training (null: half of training split evenly among the phases, the default tau).
    """

    patience: Optional[int] = None
    min_delta: float = 0.0
    max_share: Optional[float] = None


@dataclass
class SMPConfig:
    """Sequential Modality Prioritization and the partial alternative (see ``g2d.core.smp``).

    ``enabled: null`` means the method's default (on for ``g2d``, off otherwise).
    ``tau``: a list of epochs per prioritized phase; ``null`` gives the phases the first half
    of training, split evenly; ``auto`` ends each phase by the rule of ``auto``.
    """

    enabled: Optional[bool] = None
    schedule: str = "ranked"
    tau: Any = None
    auto: AutoTauConfig = field(default_factory=AutoTauConfig)
    modulator: str = "complete"
    partial_alpha: float = 1.0
    suppression: str = "freeze"


@dataclass
class OptimConfig:
    """Optimizer and step decay; the defaults are the paper's (A.4.2)."""

    name: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: int = 200
    lr_gamma: float = 0.1


SELECTION_RULES = ("val", "last", "test")  # trainer.select: the epoch a run keeps


@dataclass
class TrainerConfig:
    """The training loop's settings.

    ``fast`` (``auto``, ``true``, ``false``) selects the fast training path of ``g2d.training.fast``;
    auto = on for CUDA once that path has passed its GPU check, the reference path until then; ``reference`` forces the fp32, eager, uncached path it is checked
    against (``g2d train --reference``). ``precision`` (``auto``, ``bf16``, ``fp32``; auto =
    bf16 on CUDA) is the fast path's autocast type, ``cuda_graph`` lets it capture whole steps,
    and ``loader_workers`` threads gather batches when the training split is not held on the GPU.
    See docs/performance.md. ``drop_last: false`` (the authors' loaders) keeps an epoch's last,
    partial batch (a remainder of one row is always dropped: BatchNorm cannot train on one row).
    ``resume`` continues the interrupted or finished run in ``out``
    (a larger ``epochs`` extends it); ``overwrite`` replaces the run ``out`` holds. Without
    either, a folder that holds a run is refused (docs/reliability.md). ``select`` is the epoch whose
    weights a run keeps: ``val`` (best validation score), ``last``, or ``test`` (best test score, the
    authors' rule: optimistic, and marked so); metrics.json records the test score under all three.
    """

    epochs: int = 300
    batch_size: int = 16
    eval_batch_size: int = 256
    device: str = "auto"
    progress: bool = True
    resume: bool = False
    overwrite: bool = False
    fast: str = "auto"
    reference: bool = False
    precision: str = "auto"
    cuda_graph: bool = True
    loader_workers: int = 4
    drop_last: bool = False
    select: str = "val"


@dataclass
class TeachersConfig:
    """Where unimodal teachers live; missing ones are trained first when a run needs them."""

    root: Optional[str] = None
    epochs: Optional[int] = None
    train_missing: bool = True


@dataclass
class ExperimentConfig:
    """One experiment. ``out`` is the run folder."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "g2d"})
    smp: SMPConfig = field(default_factory=SMPConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    seed: int = 0
    out: Optional[str] = None

    @property
    def method_name(self) -> str:
        return str(self.method.get("name", ""))

    @property
    def data_label(self) -> str:
        """The dataset name, with ``_fold<i>`` under cross-validation, so folds never share folders."""
        if self.dataset.folds:
            return f"{self.dataset.name}_fold{self.dataset.fold}"
        return self.dataset.name

    def run_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        return Path("runs") / f"{self.data_label}_{self.method_name}_seed{self.seed}"

    def teachers_dir(self) -> Path:
        if self.teachers.root:
            return Path(self.teachers.root)
        return self.run_dir().parent / "teachers" / self.data_label


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Build an ``ExperimentConfig`` from an optional YAML file and ``key=value`` overrides."""
    schema = OmegaConf.structured(ExperimentConfig)
    layers: list[DictConfig] = [schema]
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise G2DError(f"config file not found: {path}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # yaml errors come in several types
            raise G2DError(f"{path}: not a readable YAML config ({exc})") from exc
        if not isinstance(loaded, DictConfig):
            raise G2DError(f"{path}: the top level of a config must be a mapping of keys, not a list")
        layers.append(loaded)
    for item in overrides or []:
        if "=" not in item:
            raise G2DError(f"override {item!r} is not of the form key=value")
        try:
            layers.append(OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise G2DError(f"override {item!r}: {str(exc).splitlines()[0]}") from exc
        except Exception as exc:  # the value is parsed as YAML, whose errors come in several types
            raise G2DError(f"override {item!r}: the value is not valid YAML ({str(exc).splitlines()[0]})") from exc
    try:
        merged = OmegaConf.merge(*layers)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        where = f"config key {key}" if key else "config"
        raise G2DError(f"{where}: {str(exc).splitlines()[0]}") from exc
    assert isinstance(config, ExperimentConfig)
    check_ranges(config)
    return config


def check_ranges(config: ExperimentConfig) -> None:
    """Numbers that type-check but cannot train: the error names the key (also run by ``experiment.run``)."""
    limits = [
        ("trainer.epochs", config.trainer.epochs, 1), ("trainer.batch_size", config.trainer.batch_size, 1),
        ("trainer.eval_batch_size", config.trainer.eval_batch_size, 1), ("optim.lr_step", config.optim.lr_step, 1),
        ("teachers.epochs", config.teachers.epochs, 1), ("optim.momentum", config.optim.momentum, 0),
        ("optim.weight_decay", config.optim.weight_decay, 0), ("trainer.loader_workers", config.trainer.loader_workers, 0),
    ]
    for key, value, least in limits:
        if value is not None and not value >= least:
            raise G2DError(f"config key {key}: must be at least {least}, got {value}")
    for key, value in (("optim.lr", config.optim.lr), ("optim.lr_gamma", config.optim.lr_gamma)):
        if not (value > 0 and value != float("inf")):
            raise G2DError(f"config key {key}: must be a positive number, got {value}")
    if config.trainer.select not in SELECTION_RULES:
        raise G2DError(f"config key trainer.select: {config.trainer.select!r} is not one of {', '.join(SELECTION_RULES)}")
    modalities = list(config.dataset.modalities)
    repeated = sorted({m for m in modalities if modalities.count(m) > 1})
    if repeated:
        raise G2DError(f"config key dataset.modalities: {', '.join(repeated)} listed more than once in {modalities}")


def to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The config as plain data, for metrics.json and checkpoints."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)  # type: ignore[return-value]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` to ``{"a.b": 1}``, for naming the key where two configs differ."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    items: dict[str, Any] = {}
    for key, value in tree.items():
        items.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return items
