"""Parity fixtures: rebuild one official-code training step through g2d and compare it.

A fixture (``<name>.json`` + ``<name>.safetensors``, format in the fixtures' README) holds the
weights, batch and method state the official code started from and what it computed in one
step. ``build_step`` rebuilds that setup through g2d's public API with strict weight loading,
``run_one_step`` runs exactly one training step, and ``first_difference`` names the first
compared tensor outside the fixture's tolerance. Used by tests/test_parity.py and
benchmarks/parity_deviations.py; see docs/parity.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from g2d.config import load_config
from g2d.data.base import Batches, ModalitySpec, MultimodalData
from g2d.training.engine import TeacherEnsemble, prepare_training
from g2d.methods import build_method
from g2d.methods.build import build_model
from g2d.core.smp import Modulator
from g2d.models.multimodal import MultimodalModel
from g2d.training.teachers import teacher_model_config


def load_fixture(folder: Path, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The fixture's JSON spec and its tensors."""
    return json.loads((folder / f"{name}.json").read_text()), load_file(str(folder / f"{name}.safetensors"))


def with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}


def resolve_state(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The JSON's method state with each ``"tensor:KEY"`` replaced by that fixture tensor."""
    if isinstance(value, dict):
        return {key: resolve_state(item, tensors) for key, item in value.items()}
    if isinstance(value, str) and value.startswith("tensor:"):
        return tensors[value[len("tensor:"):]].clone()
    return value


def build_step(
    spec: dict, tensors: dict[str, torch.Tensor], overrides: list[str] | None = None
) -> tuple[MultimodalModel, Any, dict[str, torch.Tensor]]:
    """Model, method (set up, with its state) and batch for the fixture, weights loaded strictly.

    ``overrides`` change the fixture's config, to measure how far another setting moves the step."""
    torch.manual_seed(0)
    config = load_config(None, [*spec["config_overrides"], *(overrides or [])])
    dataset = spec["dataset"]
    modalities = {m: ModalitySpec(kind=s["kind"], shape=tuple(s["shape"])) for m, s in dataset["modalities"].items()}
    batch = with_prefix(tensors, "input.")
    data = MultimodalData(name=dataset["name"], task=dataset["task"], num_classes=dataset["num_classes"],
                          modalities=modalities, splits={s: dict(batch) for s in ("train", "val", "test")})
    method = build_method(config.method, data.task, list(modalities))
    model = build_model(modalities, config.model, dataset["num_classes"], method)
    model.load_state_dict(with_prefix(tensors, "student."), strict=True)
    teachers = None
    if spec.get("teachers"):
        teachers = TeacherEnsemble({
            m: MultimodalModel({m: modalities[m]}, teacher_model_config(config, m), dataset["num_classes"])
            for m in spec["teachers"]
        })
        for m in spec["teachers"]:
            teachers.teachers[m].load_state_dict(with_prefix(tensors, f"teacher.{m}."), strict=True)
    modulator = None
    if spec.get("smp_enabled"):
        modulator = Modulator(config.smp, {m: model.encoder_parameters(m) for m in modalities}, config.trainer.epochs)
    batches = Batches(data.splits["train"], config.trainer.batch_size, shuffle=False)
    prepare_training(model, method, data, config, torch.device("cpu"), batches, teachers, modulator)
    if spec.get("on_epoch_start"):
        method.on_epoch_start(spec["epoch"])
    if spec.get("method_state"):
        method.load_state_dict(resolve_state(spec["method_state"], tensors))
    model.train()
    return model, method, batch


def run_one_step(method: Any, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
    """Exactly one training step of the method on the batch."""
    return method.train_step({key: value.clone() for key, value in batch.items()}, epoch)


def observed(model: MultimodalModel, method: Any, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the step produced, under the fixture's ``expected.*`` key names."""
    values = {f"expected.grad.{name}": (param.grad if param.grad is not None else torch.zeros_like(param)).detach()
              for name, param in model.named_parameters()}
    values.update({f"expected.after.{name}": value.detach() for name, value in model.state_dict().items()})
    values.update({f"expected.term.{name}": torch.as_tensor(value).detach() for name, value in terms.items()})
    for name, value in method.state_dict().items():
        if isinstance(value, dict):
            values.update({f"expected.state.{name}.{key}": torch.as_tensor(item) for key, item in value.items()})
        else:
            values[f"expected.state.{name}"] = torch.as_tensor(value)
    return values


def first_difference(spec: dict, expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> str | None:
    """The first compared tensor outside its group's tolerance, described; None when all agree."""
    for group in spec["compare"]:
        for key in group["keys"]:
            want = expected[key].double()
            if key not in actual:
                return f"{group['name']}: {key} is not produced by g2d's step"
            got = actual[key].double().reshape(want.shape)
            scale = want.abs().max().item() if want.numel() else 0.0
            diff = (got - want).abs().max().item() if want.numel() else 0.0
            bound = group["atol"] + group["rtol"] * scale
            if not diff <= bound:  # NaN fails too
                return (f"{group['name']}: {key} differs from the official code by max|diff| {diff:.3e} "
                        f"> {bound:.3e} (atol {group['atol']}, rtol {group['rtol']} x max|expected| {scale:.3e})")
    return None
