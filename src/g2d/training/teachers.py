"""Unimodal teachers as explicit artifacts: safetensors weights plus JSON metadata, checked on load.

A teacher for modality ``m`` is a one-modality ``MultimodalModel`` (the student's encoder
config for ``m`` and a linear head), trained with the task loss alone. Its folder
``<teachers.root>/teacher_<m>/`` holds ``teacher.safetensors``, ``teacher.json`` and the
usual run files (``metrics.json``, checkpoints, TensorBoard logs).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from g2d.config import EncoderConfig, ExperimentConfig, ModelConfig, keys_with, reset_keys
from g2d.data.base import ModalitySpec, MultimodalData, mask_key
from g2d.errors import G2DError
from g2d.io import file_sha256, load_weights, save_weights, write_json
from g2d.locks import folder_lock
from g2d.models.multimodal import MultimodalModel
from g2d.models.pretrained import pretrained_fingerprint
from g2d.training import distributed

FORMAT = "g2d-teacher/1"
WEIGHTS = "teacher.safetensors"


def teacher_dir(config: ExperimentConfig, modality: str) -> Path:
    return config.teachers_dir() / f"teacher_{modality}"


def teacher_model_config(config: ExperimentConfig, modality: str) -> ModelConfig:
    """Late fusion over one modality is an encoder plus a linear head."""
    return ModelConfig(fusion="late", encoder=copy.deepcopy(config.model.encoder_for(modality)), encoders={})


FINGERPRINT_ROWS = 4096


def data_fingerprint(data: MultimodalData, modality: str) -> str:
    """A hash of the training rows a teacher sees, so one trained on other data is caught.

    Labels and shapes are hashed whole; inputs (and a sequence's mask) row by row, every row
    up to ``FINGERPRINT_ROWS`` and evenly spaced rows beyond, so a memory-mapped dataset of
    many gigabytes is neither copied nor read in full.
    """
    train = data.splits["train"]
    digest = hashlib.sha256()
    keys = [modality] + ([mask_key(modality)] if mask_key(modality) in train else []) + ["label"]
    size = len(train["label"])
    rows = torch.arange(size) if size <= FINGERPRINT_ROWS else torch.linspace(0, size - 1, FINGERPRINT_ROWS).long()
    for key in keys:
        tensor = train[key]
        digest.update(str(tuple(tensor.shape)).encode())
        if key != "label" and size > FINGERPRINT_ROWS:
            tensor = tensor[rows]
        for start in range(0, len(tensor), 1024):
            digest.update(tensor[start : start + 1024].contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def expected_metadata(config: ExperimentConfig, data: MultimodalData, modality: str) -> dict:
    spec = data.modalities[modality]
    metadata = {
        "format": FORMAT,
        "dataset": data.name,
        "modality": modality,
        "task": data.task,
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "input": {"kind": spec.kind, "shape": list(spec.shape)},
        "encoder": asdict(config.model.encoder_for(modality)),
        "data_fingerprint": data_fingerprint(data, modality),
        # A teacher is trained under its student's seed: one of another seed is another teacher.
        "seed": config.seed,
    }
    # Inputs standardised per channel (dataset.normalize) are other inputs: recorded only when set,
    # so teachers trained before the setting existed still match.
    if spec.mean is not None:
        metadata["input"]["normalize"] = {"mean": list(spec.mean), "std": list(spec.std)}
    # A teacher that started from pretrained files records their hashes: if a file at the same
    # path changes, the teacher no longer matches. Encoders from scratch record nothing extra.
    pretrained = pretrained_fingerprint(config.model.encoder_for(modality))
    if pretrained:
        metadata["pretrained"] = pretrained
    return metadata


def check_metadata(path: Path, found: dict, expected: dict) -> None:
    """Every field that makes a teacher usable for this student must match; the error names it."""
    for key, value in expected.items():
        if found.get(key) != value:
            raise G2DError(
                f"{path}: teacher field {key!r} is {found.get(key)!r} but this run needs {value!r}; "
                "retrain the teacher (delete its folder) or point teachers.root elsewhere"
            )


def load_teacher(config: ExperimentConfig, data: MultimodalData, modality: str) -> tuple[MultimodalModel, dict]:
    """The teacher for ``modality``, checked against this run's data and encoder config."""
    folder = teacher_dir(config, modality)
    meta_path = folder / "teacher.json"
    try:
        metadata = json.loads(meta_path.read_text())
    except FileNotFoundError as exc:
        raise G2DError(f"teacher metadata not found: {meta_path}") from exc
    except json.JSONDecodeError as exc:
        raise G2DError(f"{meta_path}: not valid JSON ({exc})") from exc
    check_metadata(meta_path, metadata, expected_metadata(config, data, modality))
    model = MultimodalModel({modality: data.modalities[modality]}, teacher_model_config(config, modality), output_size(data))
    load_weights(folder / WEIGHTS, model, recorded_sha256(metadata))
    return model, metadata


def output_size(data: MultimodalData) -> int:
    return data.num_classes if data.task == "classification" else 1


def ensure_teachers(
    config: ExperimentConfig,
    data: MultimodalData,
    train_one: Callable[[ExperimentConfig, str], dict],
) -> dict[str, tuple[MultimodalModel, dict]]:
    """Load every modality's teacher, training the missing ones first with ``train_one``.

    While some are missing the teachers folder is locked: a second run that needs the same
    teachers waits, then finds them trained, so each teacher is trained once. Teachers that
    are all there are only read (the folder may then be read-only).
    """
    # Rank 0 decides and holds the lock: under DDP every process trains the same missing teachers together.
    if distributed.from_main(not all((teacher_dir(config, m) / "teacher.json").is_file() for m in data.modalities)):
        for modality in data.modalities:  # refuse a stale teacher before training the others
            if (teacher_dir(config, modality) / "teacher.json").is_file():
                check_epochs(config, load_teacher(config, data, modality)[1], teacher_dir(config, modality))
        lock = folder_lock(config.teachers_dir(), "teachers folder") if distributed.is_main() else contextlib.nullcontext()
        with lock:
            for modality in data.modalities:
                if not distributed.from_main((teacher_dir(config, modality) / "teacher.json").is_file()):
                    if not config.teachers.train_missing:
                        raise G2DError(
                            f"teacher for {modality!r} not found in {teacher_dir(config, modality)} "
                            "and teachers.train_missing is false"
                        )
                    train_one(teacher_run_config(config, modality), modality)
    teachers = {}
    for modality in data.modalities:
        teachers[modality] = load_teacher(config, data, modality)
        check_epochs(config, teachers[modality][1], teacher_dir(config, modality))
    return teachers


def check_epochs(config: ExperimentConfig, metadata: dict, folder: Path) -> None:
    """A teacher trained for other epochs than ``teachers.epochs`` asks for is refused, not reused or replaced.

    Retraining would silently delete a finished result; with ``teachers.epochs`` unset, any
    trained teacher is used (missing ones are trained for ``trainer.epochs``).
    """
    wanted = config.teachers.epochs
    if wanted is not None and metadata.get("epochs") != wanted:
        raise G2DError(
            f"config key teachers.epochs: {wanted}, but the teacher in {folder} was trained for "
            f"{metadata.get('epochs')} epochs; use teachers.epochs={metadata.get('epochs')} to reuse it, "
            "another teachers.root to train new ones, or delete that folder to retrain it"
        )


# The keys that change what a student computes but not its teachers, which a teacher run resets.
STUDENT_KEYS = keys_with(lambda role: role.result and not role.teacher)


def teacher_run_config(config: ExperimentConfig, modality: str) -> ExperimentConfig:
    """The student's settings for one modality, with the task loss alone and no SMP.

    Only settings that shape the teacher are kept: every key whose role says it does not
    (``g2d.config.STUDENT``: the method, SMP, the fusion, the modalities) is reset to its default
    first, so an interrupted teacher run is resumed by any student that needs the same teacher.
    """
    teacher = copy.deepcopy(config)
    reset_keys(teacher, STUDENT_KEYS)
    teacher.method = {"name": "joint"}
    teacher.smp.enabled = False
    teacher.model = teacher_model_config(config, modality)
    teacher.dataset.modalities = [modality]
    teacher.out = str(teacher_dir(config, modality))
    teacher.trainer.resume = True
    teacher.trainer.overwrite = False
    if config.teachers.epochs is not None:
        teacher.trainer.epochs = config.teachers.epochs
    return teacher


def save_teacher(model: MultimodalModel, folder: Path, metadata: dict) -> None:
    """Weights first, metadata last: a teacher without ``teacher.json`` counts as missing. The metadata
    records the weights' sha256, so a loader refuses a weights file changed since (``recorded_sha256``)."""
    save_weights(folder / WEIGHTS, model, metadata={"format": FORMAT})
    write_json(folder / "teacher.json", {**metadata, "sha256": {WEIGHTS: file_sha256(folder / WEIGHTS)}})


def recorded_sha256(metadata: dict) -> str | None:
    """The weights' sha256 a teacher folder recorded; None for folders written before hashes were recorded,
    which load unchecked (docs/reliability.md)."""
    recorded = metadata.get("sha256")
    return recorded.get(WEIGHTS) if isinstance(recorded, dict) else None


def teacher_summary(teachers: dict[str, tuple[MultimodalModel, dict]]) -> dict[str, dict]:
    """Each teacher's test metrics, for metrics.json."""
    return {m: meta.get("test", {}) for m, (_, meta) in teachers.items()}


def as_modules(teachers: dict[str, tuple[MultimodalModel, dict]]) -> dict[str, torch.nn.Module]:
    return {m: model for m, (model, _) in teachers.items()}


def existing_teacher_metrics(config: ExperimentConfig, data: MultimodalData) -> dict[str, dict]:
    """Teachers' test metrics for a run that does not use teachers, where matching ones exist."""
    return {m: meta.get("test", {}) for m, (_, meta) in load_existing_teachers(config, data).items()}


def load_existing_teachers(config: ExperimentConfig, data: MultimodalData) -> dict[str, tuple[torch.nn.Module, dict]]:
    """The teachers (model, metadata) that exist for ``config`` and match ``data``; none are trained."""
    found = {}
    for modality in data.modalities:
        if (teacher_dir(config, modality) / "teacher.json").is_file():
            try:
                found[modality] = load_teacher(config, data, modality)
            except G2DError:
                continue
    return found


def existing_teachers(config: ExperimentConfig, data: MultimodalData) -> dict[str, torch.nn.Module]:
    """The modules of ``load_existing_teachers``."""
    return as_modules(load_existing_teachers(config, data))


def describe(value: object) -> str:
    """What a module returned, as an error message shows it: tensors by their shapes."""
    if isinstance(value, torch.Tensor):
        return f"a tensor {list(value.shape)}"
    if isinstance(value, (tuple, list)):
        parts = ", ".join(str(list(v.shape)) if isinstance(v, torch.Tensor) else type(v).__name__ for v in value)
        return f"a {type(value).__name__} of {len(value)} ({parts})"
    if isinstance(value, Mapping):
        return f"a dict with keys {', '.join(map(repr, value))}"
    return f"a {type(value).__name__}"


EXAMPLE_OUTPUTS = "e.g. outputs=lambda out: (out[0].mean(dim=(2, 3)), out[1]) pools [B, C, H, W] maps"


def check_pair(pair: object, call: str, argument: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A teacher's ``(features [B, D], logits [B, C])``; anything else is refused naming ``call(argument=...)``."""
    hint = (f"make outputs= return that pair ({EXAMPLE_OUTPUTS})" if argument == "outputs" else
            f"pass outputs=, a function of its output that returns that pair ({EXAMPLE_OUTPUTS})")
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, torch.Tensor) for t in pair)):
        raise G2DError(f"{call}({argument}=...): the teacher gives {describe(pair)}, not (features [B, D], "
                       f"logits [B, C]); {hint}")
    features, logits = pair
    if features.dim() != 2 or logits.dim() != 2 or features.shape[0] != logits.shape[0]:
        raise G2DError(f"{call}({argument}=...): expected (features [B, D], logits [B, C]), got features "
                       f"{list(features.shape)} and logits {list(logits.shape)}; {hint}")
    return features, logits


class Teacher(torch.nn.Module):
    """A frozen unimodal teacher: ``teacher(x)`` returns ``(features [B, D], logits [B, C])``, without autograd.

    ``module`` is any model of one modality; ``outputs`` maps its output to that pair where it does not
    return it already (a tuple in another order, a dict, feature maps to pool). The module's parameters
    are frozen in place, and it stays in eval mode whatever ``.train()`` is called on the teacher or on a
    parent, so its BatchNorm statistics and dropout never change. ``metadata`` is what its folder recorded.
    """

    def __init__(self, module: torch.nn.Module, outputs: Callable[[Any], tuple[torch.Tensor, torch.Tensor]] | None = None,
                 metadata: dict | None = None) -> None:
        if not isinstance(module, torch.nn.Module):
            raise G2DError(f"Teacher(module=...): expected a torch.nn.Module, got {type(module).__name__}")
        if outputs is not None and not callable(outputs):
            raise G2DError(f"Teacher(outputs=...): expected a function of the module's output that returns "
                           f"(features, logits), got {type(outputs).__name__}")
        super().__init__()
        self.module = module
        self.outputs = outputs
        self.metadata = dict(metadata or {})
        self.modality: str | None = self.metadata.get("modality")
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> Teacher:
        """Eval mode whatever ``mode`` says: a parent's ``.train()`` must not move the teacher's BatchNorm or start its dropout."""
        return super().train(False)

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            output = self.module(*args, **kwargs)
            return check_pair(output if self.outputs is None else self.outputs(output), "Teacher",
                              "module" if self.outputs is None else "outputs")


class OneModality(torch.nn.Module):
    """A CLI teacher (a one-modality ``MultimodalModel``) as a module of its modality's batch.

    ``x`` is the modality's float input batch as the model sees it (after the dataset's scaling, and
    standardised by ``metadata["input"]["normalize"]`` when the teacher recorded one); sequence and
    token inputs also take their ``mask`` (True for real steps).
    """

    def __init__(self, model: MultimodalModel, modality: str) -> None:
        super().__init__()
        self.model, self.modality = model, modality

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {self.modality: x} if mask is None else {self.modality: x, mask_key(self.modality): mask}
        output = self.model(inputs)
        return output.features[self.modality], output.logits


def load_teacher_folder(folder: str | Path, module: torch.nn.Module | None = None,
                        outputs: Callable[[Any], tuple[torch.Tensor, torch.Tensor]] | None = None) -> Teacher:
    """The teacher saved in ``folder`` (``teacher.json`` + ``teacher.safetensors``) as a frozen ``Teacher``.

    A CLI teacher is rebuilt from its metadata (dataset, encoder, data fingerprint are in ``.metadata``);
    one saved by ``g2d.train_teacher`` is your own module: pass a new instance as ``module`` (and its
    ``outputs``), and the saved weights are loaded into it.
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise G2DError(f"load_teacher(folder=...): expected a folder path, got {type(folder).__name__}")
    folder = Path(folder)
    if folder.is_file():
        raise G2DError(f"load_teacher(folder=...): {folder} is a file; pass the teacher's folder "
                       "(it holds teacher.json and teacher.safetensors)")
    if not folder.is_dir():
        raise G2DError(f"load_teacher(folder=...): no folder {folder}")
    if module is not None and not isinstance(module, torch.nn.Module):
        raise G2DError(f"load_teacher(module=...): expected a torch.nn.Module, got {type(module).__name__}")
    meta_path = folder / "teacher.json"
    try:
        metadata = json.loads(meta_path.read_text())
    except FileNotFoundError as exc:
        raise G2DError(f"load_teacher(folder=...): no teacher in {folder} ({meta_path.name} not found)") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise G2DError(f"{meta_path}: not valid JSON ({exc})") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else None
        raise G2DError(f"{meta_path}: format {found!r} is not a {FORMAT} teacher")
    if module is None:
        if "module" in metadata:
            raise G2DError(f"load_teacher(module=...): {folder} holds the weights of your {metadata['module']} "
                           "(saved by g2d.train_teacher); pass a new one: load_teacher(folder, module=..., outputs=...)")
        model = cli_teacher_model(meta_path, metadata)
        load_weights(folder / WEIGHTS, model, recorded_sha256(metadata))
        module = OneModality(model, metadata["modality"])
    else:
        load_weights(folder / WEIGHTS, module, recorded_sha256(metadata))
    return Teacher(module, outputs, metadata)


def cli_teacher_model(meta_path: Path, metadata: dict) -> MultimodalModel:
    """The untrained model a CLI teacher's metadata describes; a field missing names the file."""
    try:
        spec = ModalitySpec(metadata["input"]["kind"], tuple(metadata["input"]["shape"]))
        encoder = EncoderConfig(**metadata["encoder"])
        outputs = metadata["num_classes"] if metadata["task"] == "classification" else 1
        modality = metadata["modality"]
    except (KeyError, TypeError) as exc:
        raise G2DError(f"{meta_path}: not a complete teacher record ({type(exc).__name__}: {exc})") from exc
    return MultimodalModel({modality: spec}, ModelConfig(fusion="late", encoder=encoder, encoders={}), outputs)
