"""The public API on code g2d did not write (issue 30): teachers from any module (``Teacher``, ``train_teacher``,
``teacher_confidences``, ``load_teacher``), ``G2DLoss``'s checks and projections, and one G2DError naming the
argument for every mistake of the audit, each its own test."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import g2d
from g2d.config import EncoderConfig, ModelConfig
from g2d.data.base import ModalitySpec
from g2d.errors import G2DError
from g2d.io import save_weights
from g2d.models.multimodal import MultimodalModel

ROOT = Path(__file__).resolve().parents[1]
B, D, C = 4, 8, 5


def loss_inputs(**changes: object) -> dict:
    """A valid G2DLoss call (two modalities), with some arguments replaced."""
    generator = torch.Generator().manual_seed(0)
    given = {
        "logits": torch.randn(B, C, generator=generator),
        "targets": torch.tensor([0, 4, 2, 1]),
        "features": {m: torch.randn(B, D, generator=generator) for m in ("audio", "video")},
        "teacher_logits": {m: torch.randn(B, C, generator=generator) for m in ("audio", "video")},
        "teacher_features": {m: torch.randn(B, D, generator=generator) for m in ("audio", "video")},
    }
    for key, value in changes.items():
        if "." in key:
            argument, modality = key.split(".")
            given[argument] = {**given[argument], modality: value}
        else:
            given[key] = value
    return given


# --- G2DLoss: every call checks what it is given -----------------------------------------------------------

CALL_MISTAKES = {
    "student [B,1,D] against teacher [B,D] (would broadcast)": (
        {"features.audio": torch.zeros(B, 1, D)}, r"^G2DLoss\(features=\.\.\.\): modality 'audio': .*\[4, 1, 8\].*\[4, 8\]"),
    "widths 4 against 8": (
        {"features.audio": torch.zeros(B, 4)},
        r"^G2DLoss\(teacher_features=\.\.\.\): modality 'audio': widths differ, student features \[4, 4\], teacher "
        r"features \[4, 8\]; bridge them with G2DLoss\(projections=\{'audio': \(4, 8\)\}\)"),
    "unpooled teacher maps": (
        {"teacher_features.video": torch.zeros(B, D, 3, 3)},
        r"^G2DLoss\(teacher_features=\.\.\.\): modality 'video': .*\[4, 8\].*\[4, 8, 3, 3\]"),
    "teacher of 6 classes, student of 5": (
        {"teacher_logits.audio": torch.zeros(B, 6)},
        r"^G2DLoss\(teacher_logits=\.\.\.\): modality 'audio': teacher logits \[4, 6\] .* student's logits \[4, 5\]"),
    "float targets": ({"targets": torch.tensor([0.0, 1.0, 2.0, 1.0])}, r"^G2DLoss\(targets=\.\.\.\): targets are torch.float32"),
    "targets out of range": (
        {"targets": torch.tensor([0, 5, 1, 1])}, r"^G2DLoss\(targets=\.\.\.\): a target is outside 0\.\.4 .*Target 5 is out of bounds"),
    "negative target": ({"targets": torch.tensor([0, -1, 1, 1])}, r"^G2DLoss\(targets=\.\.\.\): .*Target -1 is out of bounds"),
    "targets of another batch": ({"targets": torch.tensor([0, 1])}, r"^G2DLoss\(targets=\.\.\.\): .*\[2\].*\[4, 5\]"),
    "features=None": ({"features": None}, r"^G2DLoss\(features=\.\.\.\): expected a non-empty dict .* got NoneType"),
    "empty dicts": ({"features": {}, "teacher_logits": {}, "teacher_features": {}}, r"^G2DLoss\(features=\.\.\.\): .*empty dict"),
    "stray teacher_logits key": (
        {"teacher_logits.text": torch.zeros(B, C)}, r"^G2DLoss\(teacher_logits=\.\.\.\): modality 'text' is not in features"),
    "missing teacher_features key": (
        {"teacher_features": {"audio": torch.zeros(B, D)}},
        r"^G2DLoss\(teacher_features=\.\.\.\): no entry for modality 'video'"),
    "numpy student features": (
        {"features.audio": np.zeros((B, D), dtype=np.float32)},
        r"^G2DLoss\(features=\.\.\.\): modality 'audio' must be a torch.Tensor, got numpy.ndarray"),
    "student features of another batch": (
        {"features.video": torch.zeros(B + 1, D)}, r"^G2DLoss\(features=\.\.\.\): modality 'video': expected \[B, D\] with B = 4"),
}


@pytest.mark.parametrize("case", sorted(CALL_MISTAKES))
def test_g2d_loss_refuses_a_mistaken_call(case: str) -> None:
    changes, message = CALL_MISTAKES[case]
    with pytest.raises(G2DError, match=message):
        g2d.G2DLoss()(**loss_inputs(**changes))


def test_g2d_loss_checks_without_reading_a_tensor_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's step computes its loss here and makes no host reads (a GPU would stop every step)."""
    given, loss_fn = loss_inputs(), g2d.G2DLoss()
    reads = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _original=original, **k: reads.append(1) or _original(self, *a, **k))
    loss_fn(**given)
    monkeypatch.undo()
    assert reads == []


SETTING_MISTAKES = {
    "alpha=-1": ({"alpha": -1}, r"^G2DLoss\(alpha=\.\.\.\): must be a finite number >= 0, got -1"),
    "beta=nan": ({"beta": float("nan")}, r"^G2DLoss\(beta=\.\.\.\): .* got nan"),
    "alpha=inf": ({"alpha": float("inf")}, r"^G2DLoss\(alpha=\.\.\.\): .* got inf"),
    "alpha='1'": ({"alpha": "1"}, r"^G2DLoss\(alpha=\.\.\.\): .* got '1'"),
    "alpha=True": ({"alpha": True}, r"^G2DLoss\(alpha=\.\.\.\)"),
    "temperature=0": ({"temperature": 0}, r"^G2DLoss\(temperature=\.\.\.\): must be a finite number > 0, got 0"),
    "projections not a dict": ({"projections": [(4, 8)]}, r"^G2DLoss\(projections=\.\.\.\): expected \{modality"),
    "projection of one width": ({"projections": {"audio": 8}}, r"^G2DLoss\(projections=\.\.\.\): modality 'audio': expected \(student_dim"),
}


@pytest.mark.parametrize("case", sorted(SETTING_MISTAKES))
def test_g2d_loss_refuses_a_mistaken_setting(case: str) -> None:
    settings, message = SETTING_MISTAKES[case]
    with pytest.raises(G2DError, match=message):
        g2d.G2DLoss(**settings)


def test_a_weight_changed_after_construction_is_checked_too() -> None:
    loss_fn = g2d.G2DLoss()
    loss_fn.alpha = 0.5
    assert loss_fn.alpha == 0.5
    with pytest.raises(G2DError, match=r"^G2DLoss\(beta=\.\.\.\)"):
        loss_fn.beta = -2.0


def test_regression_logits_must_be_one_column() -> None:
    """[B, 3] logits against [B] targets would broadcast inside the MSE."""
    given = loss_inputs(targets=torch.rand(B))
    given["teacher_logits"] = {m: torch.zeros(B, C) for m in given["features"]}
    with pytest.raises(G2DError, match=r"^G2DLoss\(logits=\.\.\.\): expected \[B, 1\]"):
        g2d.G2DLoss(task="regression")(**given)


def test_projection_is_a_learnable_linear_map_by_hand() -> None:
    """The feature term compares W s + b (the map of the student's features) with the teacher's, and trains W, b."""
    given = loss_inputs(**{"features.audio": torch.randn(B, 3, generator=torch.Generator().manual_seed(1))})
    loss_fn = g2d.G2DLoss(alpha=2.0, projections={"audio": (3, D)})
    assert [name for name, _ in loss_fn.named_parameters()] == ["projections.audio.weight", "projections.audio.bias"]
    total, terms = loss_fn(**given)
    projection = loss_fn.projections["audio"]
    mapped = given["features"]["audio"] @ projection.weight.T + projection.bias
    feature = F.mse_loss(mapped, given["teacher_features"]["audio"]) + F.mse_loss(
        given["features"]["video"], given["teacher_features"]["video"])
    assert terms["feature"].item() == pytest.approx(feature.item(), rel=1e-6)
    before = projection.weight.detach().clone()
    optimizer = torch.optim.SGD(loss_fn.parameters(), lr=0.1)
    total.backward()
    optimizer.step()
    assert not torch.equal(projection.weight, before)


def test_projection_mistakes_name_the_option() -> None:
    with pytest.raises(G2DError, match=r"^G2DLoss\(projections=\.\.\.\): modality 'text' is not in features"):
        g2d.G2DLoss(projections={"text": (D, D)})(**loss_inputs())
    with pytest.raises(G2DError, match=r"^G2DLoss\(projections=\.\.\.\): modality 'audio' maps 3 to 8 features, but got "
                                       r"student features \[4, 8\]"):
        g2d.G2DLoss(projections={"audio": (3, D)})(**loss_inputs())


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8])
def test_integer_targets_of_any_width_count_as_the_long_ones(dtype: torch.dtype) -> None:
    """torch's cross_entropy refuses int32 and gather refuses uint8: both are class indices all the same."""
    given = loss_inputs()
    expected = g2d.G2DLoss()(**given)[0]
    assert g2d.G2DLoss()(**{**given, "targets": given["targets"].to(dtype)})[0].item() == pytest.approx(expected.item())
    confidence = g2d.confidence(given["logits"], given["targets"])
    assert g2d.confidence(given["logits"], given["targets"].to(dtype)).item() == pytest.approx(confidence.item())


# --- confidence ----------------------------------------------------------------------------------------------

CONFIDENCE_MISTAKES = {
    "numpy logits": ((np.zeros((2, 3)), torch.tensor([0, 1])), r"^confidence\(logits=\.\.\.\): logits must be a torch.Tensor, got numpy"),
    "empty batch": ((torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)), r"^confidence\(logits=\.\.\.\): .*B, C > 0, got shape \[0, 3\]"),
    "numpy targets": ((torch.zeros(2, 3), np.array([0, 1])), r"^confidence\(targets=\.\.\.\): targets must be a torch.Tensor"),
    "targets out of range": ((torch.zeros(2, 3), torch.tensor([0, 3])), r"^confidence\(targets=\.\.\.\): .*class 3"),
    "one target for two rows": ((torch.zeros(2, 3), torch.tensor([0])), r"^confidence\(targets=\.\.\.\)"),
}


@pytest.mark.parametrize("case", sorted(CONFIDENCE_MISTAKES))
def test_confidence_refuses_a_mistaken_call(case: str) -> None:
    arguments, message = CONFIDENCE_MISTAKES[case]
    with pytest.raises(G2DError, match=message):
        g2d.confidence(*arguments)


def test_confidence_refuses_an_unknown_task() -> None:
    with pytest.raises(G2DError, match=r"^confidence\(task=\.\.\.\)"):
        g2d.confidence(torch.zeros(2, 3), torch.tensor([0, 1]), task="ranking")


# --- Teacher -------------------------------------------------------------------------------------------------


class MapNet(nn.Module):
    """A module of our own: BatchNorm and dropout, returns ``(logits, feature maps [B, 6, H, W])``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.body(x)
        return self.head(maps.mean(dim=(2, 3))), maps


def pooled(output: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return output[1].mean(dim=(2, 3)), output[0]


def test_teacher_of_any_module_stays_frozen_in_eval_under_a_training_parent() -> None:
    torch.manual_seed(0)
    module = MapNet()
    teacher = g2d.Teacher(module, outputs=pooled)
    parent = nn.ModuleDict({"student": nn.Linear(2, 2), "teacher": teacher})
    parent.train()
    assert parent["student"].training and not teacher.training and not module.body[1].training
    assert not module.body[3].training  # dropout
    statistics = copy.deepcopy(module.body[1].state_dict())
    x = torch.randn(5, 1, 4, 4, requires_grad=True)
    features, logits = teacher(x)
    assert features.shape == (5, 6) and logits.shape == (5, 3)
    assert all(torch.equal(value, statistics[key]) for key, value in module.body[1].state_dict().items())
    assert torch.equal(teacher(x)[0], features)  # dropout off: the same output twice
    assert not features.requires_grad and not logits.requires_grad  # no autograd through the teacher
    assert not any(p.requires_grad for p in module.parameters())
    teacher.to(torch.float64)
    assert module.head.weight.dtype == torch.float64 and teacher(x.double())[1].dtype == torch.float64


def test_teacher_returning_the_pair_needs_no_outputs() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder, self.head = nn.Linear(4, 3), nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features = self.encoder(x)
            return features, self.head(features)

    module = Pair()
    x = torch.randn(2, 4)
    features, logits = g2d.Teacher(module)(x)
    assert torch.equal(features, module.encoder(x)) and torch.equal(logits, module.head(module.encoder(x)))


TEACHER_MISTAKES = {
    "not a module": (lambda: g2d.Teacher("resnet18"), r"^Teacher\(module=\.\.\.\): expected a torch.nn.Module, got str"),
    "outputs not a function": (lambda: g2d.Teacher(MapNet(), outputs=3), r"^Teacher\(outputs=\.\.\.\): expected a function"),
    "maps without outputs": (
        lambda: g2d.Teacher(MapNet())(torch.zeros(2, 1, 4, 4)),
        r"^Teacher\(module=\.\.\.\): expected \(features \[B, D\], logits \[B, C\]\), got features \[2, 3\] and logits "
        r"\[2, 6, 4, 4\]; pass outputs="),
    "outputs giving three": (
        lambda: g2d.Teacher(MapNet(), outputs=lambda out: (*out, out[0]))(torch.zeros(2, 1, 4, 4)),
        r"^Teacher\(outputs=\.\.\.\): the teacher gives a tuple of 3 \(\[2, 3\], \[2, 6, 4, 4\], \[2, 3\]\)"),
    "outputs giving a dict": (
        lambda: g2d.Teacher(MapNet(), outputs=lambda out: {"logits": out[0]})(torch.zeros(2, 1, 4, 4)),
        r"^Teacher\(outputs=\.\.\.\): the teacher gives a dict with keys 'logits'"),
}


@pytest.mark.parametrize("case", sorted(TEACHER_MISTAKES))
def test_teacher_refuses_a_mistake(case: str) -> None:
    call, message = TEACHER_MISTAKES[case]
    with pytest.raises(G2DError, match=message):
        call()


# --- train_teacher -------------------------------------------------------------------------------------------


def tuples(rows: int = 24, batch_size: int = 8, seed: int = 0) -> torch.utils.data.DataLoader:
    """(image [1, 4, 4], label) rows of 3 classes, the image's mean telling the class."""
    generator = torch.Generator().manual_seed(seed)
    label = torch.arange(rows) % 3
    image = torch.randn(rows, 1, 4, 4, generator=generator) * 0.3 + label.view(-1, 1, 1, 1).float()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(image, label), batch_size=batch_size)


def first(batch: list[torch.Tensor]) -> torch.Tensor:
    return batch[0]


def second(batch: list[torch.Tensor]) -> torch.Tensor:
    return batch[1]


def test_train_teacher_is_the_task_loss_alone_step_by_step() -> None:
    """Two epochs of train_teacher equal the same SGD steps on cross-entropy written out by hand."""
    torch.manual_seed(0)
    module = MapNet()
    module.body[3].p = 0.0  # dropout off, so the two runs see the same forward
    by_hand = copy.deepcopy(module)
    loader = tuples()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    teacher = g2d.train_teacher(module, loader, inputs=first, targets=second, epochs=2, outputs=pooled,
                                optimizer=optimizer)
    hand_optimizer = torch.optim.SGD(by_hand.parameters(), lr=0.1, momentum=0.9)
    by_hand.train()
    for _ in range(2):
        for image, label in loader:
            hand_optimizer.zero_grad()
            F.cross_entropy(by_hand(image)[0], label).backward()
            hand_optimizer.step()
    for (key, value), other in zip(module.state_dict().items(), by_hand.state_dict().values()):
        assert torch.allclose(value, other, atol=1e-6), key
    assert isinstance(teacher, g2d.Teacher) and teacher.module is module and not module.training
    assert not any(p.requires_grad for p in module.parameters())
    assert teacher.metadata["epochs"] == 2 and teacher.metadata["num_classes"] == 3
    assert teacher.metadata["feature_dim"] == 6


def test_train_teacher_default_optimizer_is_the_papers_sgd() -> None:
    torch.manual_seed(0)
    module, by_hand = MapNet(), None
    module.body[3].p = 0.0
    by_hand = copy.deepcopy(module)
    g2d.train_teacher(module, tuples(), inputs=first, targets=second, epochs=1, outputs=pooled)
    optimizer = torch.optim.SGD(by_hand.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    for image, label in tuples():
        optimizer.zero_grad()
        F.cross_entropy(by_hand(image)[0], label).backward()
        optimizer.step()
    assert torch.allclose(module.head.weight, by_hand.head.weight, atol=1e-7)


def test_train_teacher_saves_a_folder_that_load_teacher_reloads_into_a_new_module(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = MapNet()
    teacher = g2d.train_teacher(module, tuples(), inputs=first, targets=second, epochs=3, outputs=pooled,
                                optimizer=torch.optim.Adam(module.parameters(), lr=0.01), out=tmp_path / "teacher")
    assert sorted(p.name for p in (tmp_path / "teacher").iterdir()) == ["teacher.json", "teacher.safetensors"]
    metadata = json.loads((tmp_path / "teacher" / "teacher.json").read_text())
    assert metadata["format"] == "g2d-teacher/1" and metadata["module"].endswith("MapNet")
    x = torch.randn(5, 1, 4, 4)
    reloaded = g2d.load_teacher(tmp_path / "teacher", module=MapNet(), outputs=pooled)
    assert all(torch.equal(a, b) for a, b in zip(reloaded(x), teacher(x)))
    assert not reloaded.training and not any(p.requires_grad for p in reloaded.parameters())
    with pytest.raises(G2DError, match=r"^load_teacher\(module=\.\.\.\): .* holds the weights of your .*MapNet"):
        g2d.load_teacher(tmp_path / "teacher")
    with pytest.raises(G2DError, match=r"teacher\.safetensors: cannot load weights into this model"):
        g2d.load_teacher(tmp_path / "teacher", module=nn.Linear(2, 2))


def test_train_teacher_never_replaces_a_teacher_and_trains_nothing_then(tmp_path: Path) -> None:
    module = MapNet()
    g2d.train_teacher(module, tuples(), inputs=first, targets=second, epochs=1, outputs=pooled, out=tmp_path)
    saved = (tmp_path / "teacher.safetensors").read_bytes()
    other = MapNet()
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(G2DError, match=r"^train_teacher\(out=\.\.\.\): .* already holds a teacher"):
        g2d.train_teacher(other, tuples(), inputs=first, targets=second, epochs=1, outputs=pooled, out=tmp_path)
    assert (tmp_path / "teacher.safetensors").read_bytes() == saved
    assert all(torch.equal(value, before[key]) for key, value in other.state_dict().items())


TRAIN_MISTAKES = {
    "module not a module": ({"module": "MapNet"}, r"^train_teacher\(module=\.\.\.\): expected a torch.nn.Module"),
    "loader None": ({"loader": None}, r"^train_teacher\(loader=\.\.\.\): expected an iterable of batches"),
    "loader empty": ({"loader": []}, r"^train_teacher\(loader=\.\.\.\): it gave no batches"),
    "inputs not a function": ({"inputs": 0}, r"^train_teacher\(inputs=\.\.\.\): expected a function of a batch"),
    "targets not a function": ({"targets": "label"}, r"^train_teacher\(targets=\.\.\.\): expected a function of a batch"),
    "epochs 0": ({"epochs": 0}, r"^train_teacher\(epochs=\.\.\.\): expected a positive integer, got 0"),
    "epochs 1.5": ({"epochs": 1.5}, r"^train_teacher\(epochs=\.\.\.\): expected a positive integer, got 1.5"),
    "outputs not a function": ({"outputs": "pool"}, r"^train_teacher\(outputs=\.\.\.\): expected a function"),
    "outputs missing": ({"outputs": None}, r"^train_teacher\(module=\.\.\.\): expected \(features \[B, D\], logits \[B, C\]\)"),
    "optimizer of another model": (
        {"optimizer": torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)},
        r"^train_teacher\(optimizer=\.\.\.\): it holds none of the module's parameters"),
    "optimizer a class": ({"optimizer": torch.optim.SGD}, r"^train_teacher\(optimizer=\.\.\.\): expected a torch.optim.Optimizer"),
    "unknown task": ({"task": "ranking"}, r"^train_teacher\(task=\.\.\.\): unknown task 'ranking'"),
    "unknown device": ({"device": "gpu0"}, r"^train_teacher\(device=\.\.\.\): not a device: 'gpu0'"),
    "float targets": ({"targets": lambda batch: batch[1].float()}, r"^train_teacher\(targets=\.\.\.\): targets are torch.float32"),
    "out a number": ({"out": 3}, r"^train_teacher\(out=\.\.\.\): expected a folder path, got int"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_MISTAKES))
def test_train_teacher_refuses_a_mistake(case: str) -> None:
    changes, message = TRAIN_MISTAKES[case]
    module = changes.pop("module", MapNet())
    arguments = {"loader": tuples(), "inputs": first, "targets": second, "epochs": 1, "outputs": pooled, **changes}
    loader = arguments.pop("loader")
    with pytest.raises(G2DError, match=message):
        g2d.train_teacher(module, loader, **arguments)


def test_train_teacher_refuses_a_file_as_out(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(G2DError, match=r"^train_teacher\(out=\.\.\.\): .*file is a file"):
        g2d.train_teacher(MapNet(), tuples(), inputs=first, targets=second, epochs=1, outputs=pooled, out=tmp_path / "file")


# --- teacher_confidences -------------------------------------------------------------------------------------


def test_teacher_confidences_is_eq_5_over_every_row_not_a_mean_of_batch_means() -> None:
    """5 rows in batches of 2, 2, 1: the sum of the true-class probabilities / 5, by hand."""

    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, torch.stack([torch.zeros_like(x[:, 0]), x[:, 0]], dim=1)  # logits [0, x]

    values = torch.tensor([[0.0], [math.log(3.0)], [0.0], [math.log(3.0)], [-math.log(3.0)]])
    labels = torch.tensor([1, 1, 0, 0, 1])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(values, labels), batch_size=2)
    found = g2d.teacher_confidences({"a": g2d.Teacher(Fixed())}, loader, inputs={"a": first}, targets=second)
    probabilities = [0.5, 0.75, 0.5, 0.25, 0.25]  # p(true class) of each row
    assert found == {"a": pytest.approx(sum(probabilities) / 5)}
    batch_means = [(0.5 + 0.75) / 2, (0.5 + 0.25) / 2, 0.25]
    assert sum(batch_means) / 3 != pytest.approx(found["a"])  # what averaging batch means would give


def test_teacher_confidences_ranks_two_teachers_for_smp() -> None:
    torch.manual_seed(0)
    strong = g2d.train_teacher(MapNet(), tuples(), inputs=first, targets=second, epochs=5, outputs=pooled,
                               optimizer=None)
    weak = g2d.Teacher(MapNet(), outputs=pooled)
    found = g2d.teacher_confidences({"a": weak, "b": strong}, tuples(), inputs={"a": first, "b": first}, targets=second)
    assert set(found) == {"a", "b"} and all(isinstance(v, float) and 0 < v < 1 for v in found.values())
    smp = g2d.SMP(encoders={"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)}, epochs=2)
    assert smp.rank(found) == sorted(found, key=found.get)


CONFIDENCES_MISTAKES = {
    "a plain module": (
        {"teachers": {"a": MapNet()}}, r"^teacher_confidences\(teachers=\.\.\.\): modality 'a' is a MapNet, not a g2d.Teacher"),
    "no teachers": ({"teachers": {}}, r"^teacher_confidences\(teachers=\.\.\.\): expected a non-empty dict"),
    "inputs for another modality": ({"inputs": {"b": first}}, r"^teacher_confidences\(inputs=\.\.\.\): expected one function per teacher"),
    "inputs a function": ({"inputs": first}, r"^teacher_confidences\(inputs=\.\.\.\): expected one function per teacher"),
    "input not a function": ({"inputs": {"a": 0}}, r"^teacher_confidences\(inputs=\.\.\.\): expected a function of a batch"),
    "empty loader": ({"loader": []}, r"^teacher_confidences\(loader=\.\.\.\): it gave no rows"),
    "targets out of range": ({"targets": lambda batch: batch[1] + 3}, r"^teacher_confidences\(targets=\.\.\.\): .*outside 0\.\.2"),
}


@pytest.mark.parametrize("case", sorted(CONFIDENCES_MISTAKES))
def test_teacher_confidences_refuses_a_mistake(case: str) -> None:
    changes, message = CONFIDENCES_MISTAKES[case]
    arguments = {"teachers": {"a": g2d.Teacher(MapNet(), outputs=pooled)}, "loader": tuples(), "inputs": {"a": first},
                 "targets": second, **changes}
    with pytest.raises(G2DError, match=message):
        g2d.teacher_confidences(arguments.pop("teachers"), arguments.pop("loader"), **arguments)


# --- load_teacher ----------------------------------------------------------------------------------------------


def cli_teacher_folder(folder: Path, metadata_changes: dict | None = None) -> MultimodalModel:
    """A folder as the CLI writes it, for a one-modality MLP teacher of 3 classes."""
    encoder = EncoderConfig(name="mlp", hidden=[4])
    torch.manual_seed(0)
    model = MultimodalModel({"a": ModalitySpec("vector", (5,))}, ModelConfig(fusion="late", encoder=encoder, encoders={}), 3)
    metadata = {"format": "g2d-teacher/1", "dataset": "tiny", "modality": "a", "task": "classification", "num_classes": 3,
                "input": {"kind": "vector", "shape": [5]}, "encoder": asdict(encoder), **(metadata_changes or {})}
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / "teacher.safetensors", model)
    (folder / "teacher.json").write_text(json.dumps({k: v for k, v in metadata.items() if v is not None}))
    return model


def test_load_teacher_keeps_loading_the_clis_folders(tmp_path: Path) -> None:
    model = cli_teacher_folder(tmp_path / "teacher_a")
    teacher = g2d.load_teacher(tmp_path / "teacher_a")
    x = torch.randn(6, 5)
    model.eval()
    output = model({"a": x})
    features, logits = teacher(x)
    assert torch.equal(features, output.features["a"]) and torch.equal(logits, output.logits)
    assert teacher.modality == "a" and teacher.metadata["dataset"] == "tiny" and not teacher.training


LOAD_MISTAKES = {
    "a number": (lambda tmp: 3, r"^load_teacher\(folder=\.\.\.\): expected a folder path, got int"),
    "a file": (lambda tmp: tmp / "teacher_a" / "teacher.json", r"^load_teacher\(folder=\.\.\.\): .*teacher.json is a file"),
    "a missing folder": (lambda tmp: tmp / "nope", r"^load_teacher\(folder=\.\.\.\): no folder .*nope"),
    "a folder without a teacher": (lambda tmp: tmp, r"^load_teacher\(folder=\.\.\.\): no teacher in"),
}


@pytest.mark.parametrize("case", sorted(LOAD_MISTAKES))
def test_load_teacher_refuses_what_is_not_a_teacher_folder(case: str, tmp_path: Path) -> None:
    cli_teacher_folder(tmp_path / "teacher_a")
    folder, message = LOAD_MISTAKES[case]
    with pytest.raises(G2DError, match=message):
        g2d.load_teacher(folder(tmp_path))


def test_load_teacher_refuses_a_module_that_is_not_one(tmp_path: Path) -> None:
    cli_teacher_folder(tmp_path / "teacher_a")
    with pytest.raises(G2DError, match=r"^load_teacher\(module=\.\.\.\): expected a torch.nn.Module, got str"):
        g2d.load_teacher(tmp_path / "teacher_a", module="MapNet")


def test_load_teacher_names_the_file_of_an_incomplete_record(tmp_path: Path) -> None:
    cli_teacher_folder(tmp_path / "teacher_a", {"encoder": None})
    with pytest.raises(G2DError, match=r"teacher\.json: not a complete teacher record \(KeyError: 'encoder'\)"):
        g2d.load_teacher(tmp_path / "teacher_a")


# --- the example and the docs --------------------------------------------------------------------------------


def marked_lines(text: str) -> int:
    return sum(line.rstrip().endswith("# G²D") for line in text.splitlines())


def test_own_model_example_runs_and_its_count_is_the_docs(tmp_path: Path) -> None:
    script = ROOT / "examples" / "own_model.py"
    # One thread: small convolutions on two threads of a busy machine run ten times slower, not faster.
    done = subprocess.run([sys.executable, str(script), "--epochs", "2", "--seed", "0"], capture_output=True, text=True,
                          check=False, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) == {"ranking", "confidences", "multimodal", "image", "signal", "teacher_image", "teacher_signal"}
    assert sorted(result["ranking"]) == ["image", "signal"]
    assert result["ranking"][0] == min(result["confidences"], key=result["confidences"].get)  # weakest first
    assert result["multimodal"] > 0.5 and min(result["teacher_image"], result["teacher_signal"]) > 0.5  # 10 classes
    count = marked_lines(script.read_text())
    assert re.search(rf"`examples/own_model.py`[^\n]*\*\*{count} lines\*\*", (ROOT / "docs" / "api.md").read_text())
