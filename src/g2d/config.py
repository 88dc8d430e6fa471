"""The experiment config: typed dataclasses, read from YAML and dotted ``key=value`` overrides.

OmegaConf merges the YAML file and the overrides onto the schema below, so a misspelt key
or a value of the wrong type is an error that names the key. A setting with a fixed set of
values is a ``Choice`` (a str Enum), so an unknown value is refused the same way everywhere.
Method hyperparameters and dataset options are free-form mappings here because each
component declares its own settings dataclass in its record, checked by ``parse_settings``.
Every key declares its ``Role`` where it is defined (``setting``/``section``): whether it changes
results, shapes a teacher, splits a report or only says where metrics go. Resume, sweeps, reports
and teacher runs ask ``role_of`` instead of keeping lists of keys (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from g2d.errors import G2DError


class Choice(str, Enum):
    """A setting's allowed values: equal to, printed and serialized as its value (``Schedule.ranked == "ranked"``)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Schedule(Choice):
    ranked = "ranked"
    dynamic = "dynamic"


class ModulatorKind(Choice):
    complete = "complete"
    partial = "partial"


class Suppression(Choice):
    freeze = "freeze"
    zero_grad = "zero_grad"
    conv_grad = "conv_grad"


def config_error(exc: OmegaConfBaseException, prefix: str = "") -> G2DError:
    """One line naming the key at fault: ``config key smp.schedule: unknown value 'x' (choose from ranked, dynamic)``."""
    key = ".".join(part for part in (prefix, getattr(exc, "full_key", "") or "") if part)
    message = str(exc).splitlines()[0]
    listed = re.fullmatch(r"Invalid value '(.*)', expected one of \[(.*)\]", message)
    if listed:
        message = f"unknown value {listed.group(1)!r} (choose from {listed.group(2)})"
    return G2DError(f"config key {key}: {message}" if key else f"config: {message}")


def parse_settings(settings_type: type, values: dict[str, Any], prefix: str, noun: str) -> Any:
    """``values`` (the config's mapping under ``prefix``) checked against the dataclass ``settings_type``.

    An unknown key is refused with the allowed ones named, a value of the wrong type or outside
    a ``Choice`` with the key named; a ``__post_init__`` of the dataclass checks ranges.
    """
    known = [f.name for f in dataclasses.fields(settings_type)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise G2DError(f"config key {prefix}.{unknown[0]}: not {noun} (allowed: {allowed})")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(settings_type), values))
    except OmegaConfBaseException as exc:
        raise config_error(exc, prefix) from exc


def check_settings(settings: Any, prefix: str) -> None:
    """A settings dataclass built in code (not read from a config) checked as ``parse_settings`` would."""
    try:
        OmegaConf.structured(settings)
    except OmegaConfBaseException as exc:
        raise config_error(exc, prefix) from exc


@dataclass(frozen=True)
class Role:
    """What a config key is for, declared once where the key is defined (``setting``), so every tool that
    compares two configs asks the key instead of keeping its own list (docs/architecture.md, "Settings").

    ``result``: the key changes what a run computes, so a resumed run and a sweep's finished run must match
    it; without it, they may differ in the key. ``teacher``: it shapes the run's teachers, so the sweep's
    teacher folder hashes it; without it, a teacher run resets it to its default. ``report``: ``g2d report``
    keeps runs that differ in it apart; without it, such runs are repeats of one experiment. ``tracking``:
    it only says where metrics are logged. ``folder``: it names a folder, and two spellings of one folder
    are equal. ``extends``: a resumed run may raise it, which extends the run.
    """

    result: bool = True
    teacher: bool = True
    report: bool = True
    tracking: bool = False
    folder: bool = False
    extends: bool = False

    def __post_init__(self) -> None:
        if not self.result and (self.teacher or self.report):
            raise ValueError("a key that does not change a run's result neither shapes its teachers nor splits a report")


# The roles config keys take. A component's own settings (a method's hyperparameters under method.<name>,
# a loader's dataset.options) take the role of the key that holds them: they change results.
RESULT = Role()  # what the run computes, its teachers included
STUDENT = Role(teacher=False)  # what the student computes, not its teachers (a teacher run resets it)
REPEAT = Role(report=False)  # changes the numbers, yet runs that differ in it repeat one experiment: the seed, the machine
EXTENDABLE = Role(extends=True)  # trainer.epochs: a resumed run may train longer
DATA_FOLDER = Role(report=False, folder=True)  # dataset.root: which data, by its folder; other machines keep it elsewhere
LOGISTICS = Role(result=False, teacher=False, report=False)  # where files go and how this one command behaves
TRACKING = Role(result=False, teacher=False, report=False, tracking=True)  # where metrics are logged


def setting(default: Any = dataclasses.MISSING, *, role: Role, factory: Callable[[], Any] | None = None) -> Any:
    """A config field with its ``role``: ``setting(0.1, role=RESULT)``; ``factory`` makes a mutable default."""
    if factory is not None:
        return field(default_factory=factory, metadata={"role": role})
    return field(default=default, metadata={"role": role})


def section(factory: Callable[[], Any]) -> Any:
    """A config field that holds a settings dataclass (or a mapping of them): its keys declare their own roles."""
    return field(default_factory=factory, metadata={"section": True})


@dataclass
class DatasetConfig:
    """Which data, where it lives, which modalities, and how validation/test are carved.

    ``options`` holds a loader's own settings (checked by that loader, which names the
    ``dataset.options.<key>`` at fault). ``folds: K`` (K >= 2) replaces the fixed test split
    by fold ``fold`` of a seeded K-fold partition (``split_seed``), for cross-validation on
    small datasets; validation is still carved from the remaining rows (``val_fraction``).
    ``factory`` (``package.module:function``) is the function that ``name: python`` calls, with
    ``options`` as keyword arguments, for the train/validation/test ``torch.utils.data.Dataset``s.
    ``augment``: random resized crops and horizontal flips of the video and 3-channel image modalities
    in training (``g2d.data.augment``), as the references' loaders do; the teacher cache turns off.
    ``normalize``: standardise the same modalities with ImageNet's channel mean and std, in training
    and evaluation, as the references' loaders do (teachers record it and must match).
    ``stratify``: carve test, validation and folds of a classification dataset with each class in
    proportion (the default); false draws rows uniformly at random, as a reference that did not
    stratify, and keeps a class of one row from landing in a held-out split alone.
    """

    name: str = setting("mfeat", role=RESULT)
    root: Optional[str] = setting(None, role=DATA_FOLDER)
    factory: Optional[str] = setting(None, role=RESULT)
    modalities: list[str] = setting(factory=list, role=STUDENT)
    val_fraction: float = setting(0.1, role=RESULT)
    test_fraction: float = setting(0.2, role=RESULT)
    split_seed: int = setting(0, role=RESULT)
    folds: int = setting(0, role=RESULT)
    fold: int = setting(0, role=RESULT)
    options: dict[str, Any] = setting(factory=dict, role=RESULT)
    augment: bool = setting(False, role=RESULT)
    normalize: bool = setting(False, role=RESULT)
    stratify: bool = setting(True, role=RESULT)


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

    name: str = setting("auto", role=RESULT)
    width: int = setting(64, role=RESULT)
    hidden: list[int] = setting(factory=lambda: [128], role=RESULT)
    dropout: float = setting(0.0, role=RESULT)
    width_mult: float = setting(1.0, role=RESULT)
    d_model: int = setting(768, role=RESULT)
    layers: int = setting(4, role=RESULT)
    heads: int = setting(8, role=RESULT)
    feedforward: int = setting(2048, role=RESULT)
    kernel_size: int = setting(1, role=RESULT)
    positional: str = setting("sinusoidal", role=RESULT)
    pooling: str = setting("mean", role=RESULT)
    path: Optional[str] = setting(None, role=RESULT)
    weights: Optional[str] = setting(None, role=RESULT)
    weights_prefix: str = setting("", role=RESULT)
    freeze: bool = setting(False, role=RESULT)
    lr_scale: float = setting(1.0, role=RESULT)


@dataclass
class ModelConfig:
    """Fusion plus encoders; ``encoders.<modality>`` overrides ``encoder`` for that modality.
    ``fusion_settings``: the fusion's own settings, checked against its ``Settings`` (docs/models.md)."""

    fusion: str = setting("late", role=STUDENT)
    fusion_settings: dict[str, Any] = setting(factory=dict, role=STUDENT)
    encoder: EncoderConfig = section(EncoderConfig)
    encoders: dict[str, EncoderConfig] = section(dict)

    def encoder_for(self, modality: str) -> EncoderConfig:
        return self.encoders.get(modality, self.encoder)


@dataclass
class AutoTauConfig:
    """The stopping rule of ``smp.tau: auto`` (``g2d.core.autotau``, docs/smp.md).

    A phase ends when its modality's validation score has not risen by more than ``min_delta``
    for ``patience`` epochs (null: 5 % of training, at least 2), or after ``max_share`` of
    training (null: half of training split evenly among the phases, the default tau).
    """

    patience: Optional[int] = setting(None, role=STUDENT)
    min_delta: float = setting(0.0, role=STUDENT)
    max_share: Optional[float] = setting(None, role=STUDENT)


@dataclass
class SMPConfig:
    """Sequential Modality Prioritization and the partial alternative (see ``g2d.core.smp``).

    ``enabled: null`` means the method's default (on for ``g2d``, off otherwise).
    ``tau``: a list of epochs per prioritized phase; ``null`` gives the phases the first half
    of training, split evenly; ``auto`` ends each phase by the rule of ``auto``.
    """

    enabled: Optional[bool] = setting(None, role=STUDENT)
    schedule: Schedule = setting(Schedule.ranked, role=STUDENT)
    tau: Any = setting(None, role=STUDENT)
    auto: AutoTauConfig = section(AutoTauConfig)
    modulator: ModulatorKind = setting(ModulatorKind.complete, role=STUDENT)
    partial_alpha: float = setting(1.0, role=STUDENT)
    suppression: Suppression = setting(Suppression.freeze, role=STUDENT)


@dataclass
class OptimConfig:
    """Optimizer and step decay; the defaults are the paper's (A.4.2)."""

    name: str = setting("sgd", role=RESULT)
    lr: float = setting(1e-3, role=RESULT)
    momentum: float = setting(0.9, role=RESULT)
    weight_decay: float = setting(1e-4, role=RESULT)
    lr_step: int = setting(200, role=RESULT)
    lr_gamma: float = setting(0.1, role=RESULT)


SELECTION_RULES = ("val", "last", "test")  # trainer.select: the epoch a run keeps


@dataclass
class MLflowConfig:
    """Where ``trainer.loggers: [mlflow]`` logs (docs/tracking.md).

    ``tracking_uri``: a store or server (``sqlite:///runs/mlflow.db``, ``http://host:5000``); null =
    ``MLFLOW_TRACKING_URI``, else ``sqlite:///<the run folder's parent>/mlflow.db``. ``experiment``: the
    MLflow experiment's name. ``parent_run_id``: the run this one is a child of (``g2d sweep`` sets it).
    """

    tracking_uri: Optional[str] = setting(None, role=TRACKING)
    experiment: str = setting("g2d", role=TRACKING)
    parent_run_id: Optional[str] = setting(None, role=TRACKING)


@dataclass
class WandbConfig:
    """Where ``trainer.loggers: [wandb]`` logs (docs/tracking.md).

    ``mode``: null = ``WANDB_MODE``, else ``offline`` (files in ``<run folder>/wandb``, sent later by
    ``wandb sync``); ``online`` needs network and a login. ``group``: null, or the sweep's folder
    name under ``g2d sweep``.
    """

    project: str = setting("g2d", role=TRACKING)
    group: Optional[str] = setting(None, role=TRACKING)
    tags: list[str] = setting(factory=list, role=TRACKING)
    mode: Optional[str] = setting(None, role=TRACKING)


@dataclass
class TrainerConfig:
    """The training loop's settings.

    ``fast`` (``auto``, ``true``, ``false``) selects the fast training path of ``g2d.training.fast``;
    auto = on for CUDA once that path has passed its GPU check, the reference path until then; ``reference`` forces the fp32, eager, uncached path it is checked
    against (``g2d train --reference``). ``precision`` (``auto``, ``bf16``, ``fp32``; auto =
    bf16 on CUDA) is the fast path's autocast type, ``cuda_graph`` lets it capture whole steps,
    and ``loader_workers`` threads gather batches when the training split is not held on the GPU.
    ``threads`` (``auto`` or an integer) is the run's CPU thread count; auto = the cores the process
    may use, or a sweep worker's share, and one thread on the CPU for a small model (``g2d.training.threads``).
    See docs/performance.md. ``drop_last: false`` (the authors' loaders) keeps an epoch's last,
    partial batch (a remainder of one row is always dropped: BatchNorm cannot train on one row).
    ``resume`` continues the interrupted or finished run in ``out``
    (a larger ``epochs`` extends it); ``overwrite`` replaces the run ``out`` holds. Without
    either, a folder that holds a run is refused (docs/reliability.md). ``loggers`` lists where
    metrics go each epoch: ``tensorboard``, ``csv``, ``mlflow``, ``wandb`` (docs/tracking.md). ``select`` is the epoch whose
    weights a run keeps: ``val`` (best validation score), ``last``, or ``test`` (best test score, the
    authors' rule: optimistic, and marked so); metrics.json records the test score under all three.
    """

    epochs: int = setting(300, role=EXTENDABLE)
    batch_size: int = setting(16, role=RESULT)
    eval_batch_size: int = setting(256, role=RESULT)
    device: str = setting("auto", role=REPEAT)
    progress: bool = setting(True, role=LOGISTICS)
    resume: bool = setting(False, role=LOGISTICS)
    overwrite: bool = setting(False, role=LOGISTICS)
    fast: str = setting("auto", role=RESULT)
    reference: bool = setting(False, role=RESULT)
    precision: str = setting("auto", role=RESULT)
    cuda_graph: bool = setting(True, role=RESULT)
    loader_workers: int = setting(4, role=RESULT)
    threads: str = setting("auto", role=REPEAT)
    drop_last: bool = setting(False, role=RESULT)
    loggers: list[str] = setting(factory=lambda: ["tensorboard"], role=TRACKING)
    mlflow: MLflowConfig = section(MLflowConfig)
    wandb: WandbConfig = section(WandbConfig)
    select: str = setting("val", role=RESULT)


@dataclass
class TeachersConfig:
    """Where unimodal teachers live; missing ones are trained first when a run needs them."""

    root: Optional[str] = setting(None, role=LOGISTICS)
    epochs: Optional[int] = setting(None, role=RESULT)
    train_missing: bool = setting(True, role=LOGISTICS)


@dataclass
class ExperimentConfig:
    """One experiment. ``out`` is the run folder."""

    dataset: DatasetConfig = section(DatasetConfig)
    model: ModelConfig = section(ModelConfig)
    method: dict[str, Any] = setting(factory=lambda: {"name": "g2d"}, role=STUDENT)
    smp: SMPConfig = section(SMPConfig)
    optim: OptimConfig = section(OptimConfig)
    trainer: TrainerConfig = section(TrainerConfig)
    teachers: TeachersConfig = section(TeachersConfig)
    seed: int = setting(0, role=REPEAT)
    out: Optional[str] = setting(None, role=LOGISTICS)

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
        """``teachers.root``, or ``<out>/../teachers/<dataset>[_fold<i>]_seed<s>``: a teacher is trained under
        the run's seed, so runs of other seeds never share (or wait for) each other's teachers."""
        if self.teachers.root:
            return Path(self.teachers.root)
        return self.run_dir().parent / "teachers" / f"{self.data_label}_seed{self.seed}"


PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


def packaged_configs() -> list[str]:
    """Names of the configs shipped inside the package (``mfeat``, ``paper/cremad/g2d``, ...), sorted."""
    return sorted(p.relative_to(PACKAGED_CONFIGS).with_suffix("").as_posix() for p in PACKAGED_CONFIGS.rglob("*.yaml"))


def resolve_config(path: str | Path) -> Path:
    """The YAML file ``path`` names: a file that exists wins, else the packaged config of that name.

    A name may carry ``.yaml`` and a leading ``configs/`` (so ``configs/mfeat.yaml`` works outside
    a checkout too); an unknown one is an error that points at ``g2d configs``.
    """
    given = Path(path)
    if given.is_file():
        return given
    name = given.as_posix().removesuffix(".yaml").removeprefix("configs/")
    packaged = PACKAGED_CONFIGS / f"{name}.yaml"
    if name in packaged_configs():
        return packaged
    raise G2DError(f"config file not found: {path} (nor a packaged config of that name; g2d configs lists them)")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Build an ``ExperimentConfig`` from an optional YAML file (or packaged config name) and ``key=value`` overrides."""
    if path is not None and not isinstance(path, (str, Path)):
        raise G2DError(f"load_config(path=...): must be a YAML file or a packaged config name (str or Path), got "
                       f"{type(path).__name__}")
    if overrides is not None and (isinstance(overrides, str) or not isinstance(overrides, (list, tuple))
                                  or not all(isinstance(item, str) for item in overrides)):
        given = f"the str {overrides!r}; wrap it in a list: [{overrides!r}]" if isinstance(overrides, str) else \
            f"{overrides!r}"
        raise G2DError(f"load_config(overrides=...): must be a list of 'key=value' strings, got {given}")
    schema = OmegaConf.structured(ExperimentConfig)
    layers: list[DictConfig] = [schema]
    if path is not None:
        path = resolve_config(path)
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
        raise config_error(exc) from exc
    assert isinstance(config, ExperimentConfig)
    check_ranges(config)
    return config


def checked_config(config: Any, caller: str) -> ExperimentConfig:
    """``config`` rebuilt as ``load_config`` builds one, so values set in code are checked (and converted) like
    a YAML file's; what is not a config at all is refused naming ``caller``'s argument."""
    if not isinstance(config, ExperimentConfig):
        hint = f"; use g2d.{caller}(g2d.load_config({str(config)!r}))" if isinstance(config, (str, Path)) else ""
        raise G2DError(f"{caller}(config=...): must be a config from g2d.load_config(path, overrides), got "
                       f"{type(config).__name__}{hint}")
    try:
        rebuilt = OmegaConf.to_object(OmegaConf.structured(config))
    except OmegaConfBaseException as exc:
        raise config_error(exc) from exc
    assert isinstance(rebuilt, ExperimentConfig)
    return rebuilt


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


def to_yaml(config: ExperimentConfig) -> str:
    """The resolved config as YAML, every key with its value (what ``g2d config`` prints)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The config as plain data, for metrics.json and checkpoints."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True, enum_to_str=True)  # type: ignore[return-value]


def to_record(config: ExperimentConfig) -> dict[str, Any]:
    """The config as a run folder's ``config.yaml`` keeps it: ``dataset.root`` made absolute, so the
    run can be analysed or reported from any working folder."""
    record = to_dict(config)
    if config.dataset.root:
        record["dataset"]["root"] = str(Path(config.dataset.root).resolve())
    return record


def same_folder(old: Any, new: Any) -> bool:
    """Whether two spellings of a folder key's value (relative to this folder, or absolute) name one folder."""
    return old == new or bool(old and new and Path(old).resolve() == Path(new).resolve())


def section_type(hint: Any) -> tuple[type, bool]:
    """The settings dataclass a ``section`` field holds, and whether it holds a mapping of them (``model.encoders``)."""
    if typing.get_origin(hint) is dict:
        return typing.get_args(hint)[1], True
    return hint, False


def schema_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """The dataclass fields of ``cls`` with their resolved type hints."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def walk_roles(cls: type | None = None, prefix: str = "") -> Iterator[tuple[str, Role | None]]:
    """Every config key below ``cls`` (the whole config by default) with its declared role (None: none declared).
    A mapping of sections is walked through ``*`` (``model.encoders.*.width``)."""
    for item, hint in schema_fields(cls or ExperimentConfig):
        key = f"{prefix}{item.name}"
        if item.metadata.get("section"):
            inner, mapping = section_type(hint)
            yield from walk_roles(inner, f"{key}.*." if mapping else f"{key}.")
        else:
            yield key, item.metadata.get("role")


def keys_with(wanted: Callable[[Role], bool]) -> tuple[str, ...]:
    """The config keys whose declared role ``wanted`` accepts: ``keys_with(lambda role: role.tracking)``."""
    return tuple(key for key, role in walk_roles() if role is not None and wanted(role))


def combined(roles: list[Role]) -> Role:
    """The role of a section: it changes what any of its keys changes; it is tracking (a folder, extendable) if all are."""
    return Role(result=any(r.result for r in roles), teacher=any(r.teacher for r in roles),
                report=any(r.report for r in roles), tracking=all(r.tracking for r in roles),
                folder=all(r.folder for r in roles), extends=all(r.extends for r in roles))


@functools.lru_cache(maxsize=None)
def role_of(key: str) -> Role:
    """The role of a flattened config key (``optim.lr``, ``method.g2d.alpha``, ``model.encoders.audio.width``).

    A key below a declared one (a method's or a loader's own settings) takes its role; a section takes
    ``combined`` roles; a key the schema does not know (an older g2d's) counts as changing results.
    """
    cls: type = ExperimentConfig
    parts = key.split(".")
    index = 0
    while index < len(parts):
        found = {f.name: (f, hint) for f, hint in schema_fields(cls)}.get(parts[index])
        if found is None:
            return RESULT
        item, hint = found
        if not item.metadata.get("section"):
            return item.metadata.get("role") or RESULT
        cls, mapping = section_type(hint)
        index += 2 if mapping else 1  # a mapping's next part is its entry's name (a modality)
    return combined([role for _, role in walk_roles(cls) if role is not None])


# Keys that say where a run is tracked, not what it trains (derived from the declarations above).
TRACKING_KEYS = keys_with(lambda role: role.tracking)


def is_tracking_key(key: str) -> bool:
    """Whether a flattened config key (or a section, all of whose keys are) only says where metrics are logged."""
    return role_of(key).tracking


def reset_keys(config: ExperimentConfig, keys: tuple[str, ...]) -> None:
    """Set each of ``keys`` (as ``keys_with`` names them) in ``config`` to its default, in place."""
    for key in keys:
        *path, name = key.split(".")
        owners: list[Any] = [config]
        for part in path:
            owners = [entry for owner in owners for entry in
                      (owner.values() if part == "*" else [getattr(owner, part)])]
        for owner in owners:
            default = next(f for f in dataclasses.fields(owner) if f.name == name)
            value = default.default_factory() if default.default_factory is not dataclasses.MISSING else default.default
            setattr(owner, name, value)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` to ``{"a.b": 1}``, for naming the key where two configs differ."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    items: dict[str, Any] = {}
    for key, value in tree.items():
        items.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return items



def check_new_keys(saved: dict[str, Any], current: dict[str, Any], where: str,
                   ignored: Callable[[str], bool]) -> set[str]:
    """The config keys (flattened) of ``current`` that ``saved``, written by an earlier g2d in ``where``, lacks
    (``ignored`` ones aside). A key added later defaults to the behaviour from before it existed, so such a run
    continues with its new keys at their defaults; set to anything else, one line says which keys are new and
    how to continue."""
    defaults = flatten(to_dict(ExperimentConfig()))
    new = sorted(key for key in set(current) - set(saved) if key in defaults and not ignored(key))
    changed = [key for key in new if current[key] != defaults[key]]
    if changed:
        key = changed[0]
        raise G2DError(f"config key {key}: {where} was written by an earlier g2d without the keys {', '.join(new)}; "
                       f"it continues only with them at their defaults (drop {key}={current[key]!r}) or starts "
                       "anew in another folder")
    return set(new)
