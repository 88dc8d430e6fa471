"""dataset.name=python: your own torch Datasets through the CLI (factories in tests/own_dataset.py)."""

import json
import logging

import g2d.training.engine as engine

import pytest
import torch
from conftest import TINY, run_interrupted

from g2d.cli import main
from g2d.config import DatasetConfig, load_config
from g2d.data import load_dataset
from g2d.methods import METHODS
from g2d.models.fusion import FUSIONS
from g2d.runs.experiment import run

MFEAT = ["dataset.name=python", "dataset.factory=own_dataset:mfeat_views"]


def load(factory: str, **options) -> object:
    return load_dataset(DatasetConfig(name="python", factory=f"own_dataset:{factory}", options=options))


def test_wrapped_mfeat_trains_analyzes_and_reports_exactly_as_the_embedded_loader(tmp_path, capsys):
    """The same rows through the factory give bit-identical runs to dataset.name=mfeat."""
    runs = {}
    for name, dataset in (("python", MFEAT), ("mfeat", [])):
        out = tmp_path / name
        assert main(["train", "mfeat", *TINY, "trainer.epochs=2", *dataset, f"out={out}",
                     f"teachers.root={tmp_path / name / 'teachers'}"]) == 0
        runs[name] = json.loads((out / "metrics.json").read_text())
    assert runs["python"]["dataset"] == "python"
    for key in ("test", "val", "teachers", "best_epoch"):
        assert runs["python"][key] == runs["mfeat"][key], key
    assert main(["analyze", str(tmp_path / "python")]) == 0
    assert (tmp_path / "python" / "analysis" / "analysis.json").is_file()
    assert main(["report", str(tmp_path / "python"), "--out", str(tmp_path / "report")]) == 0
    assert "python" in (tmp_path / "report" / "report.md").read_text()


def test_labels_targets_kinds_and_masks_are_read_from_the_items():
    data = load("synthetic", task="regression", kinds=["vector", "sequence", "image", "video", "tokens"])
    assert data.task == "regression" and data.num_classes == 1 and data.deterministic
    assert {m: (s.kind, s.shape) for m, s in data.modalities.items()} == {
        "vector0": ("vector", (6,)), "sequence1": ("sequence", (4, 3)), "image2": ("image", (1, 8, 8)),
        "video3": ("video", (2, 1, 8, 8)), "tokens4": ("tokens", (5,))}
    train = data.splits["train"]
    assert train["sequence1.mask"].all() and train["tokens4"].dtype == torch.int64
    assert train["label"].min() == 0 and train["label"].max() == 1  # min-max over the training targets
    expected = 100_000 + 20_000 * train["vector0"][:, 0].double()
    assert torch.allclose(data.unscale_targets(train["label"].double()), expected, rtol=1e-6)
    classes = load("synthetic")
    assert classes.task == "classification" and classes.num_classes == 3 and classes.class_names == ["0", "1", "2"]
    assert classes.splits["test"]["label"].dtype == torch.int64


def test_random_augmentation_is_detected_and_keeps_the_teacher_cache_off(tmp_path, caplog):
    assert load("mfeat_views").deterministic
    assert not load("mfeat_views", noise=0.1).deterministic
    assert not load("declared_random").deterministic
    # Items are read under torch.manual_seed(dataset.split_seed): the same draws every time.
    again, other = load("mfeat_views", noise=0.1), load_dataset(DatasetConfig(
        name="python", factory="own_dataset:mfeat_views", options={"noise": 0.1}, split_seed=1))
    assert torch.equal(load("mfeat_views", noise=0.1).splits["train"]["pix"], again.splits["train"]["pix"])
    assert not torch.equal(again.splits["train"]["pix"], other.splits["train"]["pix"])
    with caplog.at_level(logging.INFO, logger="g2d"):
        run(load_config("mfeat", [*TINY, "trainer.epochs=1", "trainer.fast=true", *MFEAT,
                                  "dataset.options.noise=0.1", f"out={tmp_path / 'run'}",
                                  f"teachers.root={tmp_path / 'teachers'}"]))
    assert "dataset python transforms training rows at random; teachers run on every batch (no cache)" in caplog.text


def test_random_training_items_are_drawn_anew_each_epoch_and_a_resumed_run_sees_the_same_draws(tmp_path, monkeypatch):
    data = load("mfeat_views", noise=0.1)
    assert load("mfeat_views").redraw is None
    first, second = data.redraw(1), data.redraw(2)
    assert first.keys() == data.splits["train"].keys() and torch.equal(first["label"], second["label"])
    assert not torch.equal(first["pix"], second["pix"]) and torch.equal(first["pix"], data.redraw(1)["pix"])
    assert torch.allclose(first["pix"], data.splits["train"]["pix"], atol=1.0)  # the rows, plus noise
    selected = data.select(["mor"]).redraw(1)
    assert selected.keys() == {"mor", "label"} and torch.equal(selected["mor"], first["mor"])

    drawn = []
    original = engine.Batches

    def recording(tensors, *args, **kwargs):  # the arrays each fit's (teachers', student's) epochs iterate over
        batches = original(tensors, *args, **kwargs)
        if batches.shuffle:
            drawn.append(tensors)
        return batches

    def config(name, *extra):
        return load_config("mfeat", [*TINY, *MFEAT, "dataset.options.noise=0.1", f"out={tmp_path / name}",
                                     f"teachers.root={tmp_path / 'teachers'}", *extra])

    monkeypatch.setattr(engine, "Batches", recording)
    whole = run(config("whole"))
    last = load("mfeat_views", noise=0.1).redraw(2)  # TINY trains 3 epochs: 0, 1, 2
    assert len(drawn) == 3 and all(torch.equal(arrays[key], last[key]) for arrays in drawn for key in arrays)
    monkeypatch.undo()
    run_interrupted(monkeypatch, config("split"))
    resumed = run(config("split", "trainer.resume=true"))
    for name in ("last.safetensors", "best.safetensors"):
        assert (tmp_path / "whole" / "checkpoints" / name).read_bytes() == \
            (tmp_path / "split" / "checkpoints" / name).read_bytes(), name
    assert resumed["test"] == whole["test"]


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_on_a_python_dataset(method, tmp_path):
    config = load_config(None, ["dataset.name=python", "dataset.factory=own_dataset:synthetic", f"method.name={method}",
                                "model.encoder.hidden=[8]", "trainer.epochs=2", "trainer.batch_size=16",
                                "trainer.progress=false", f"out={tmp_path / 'run'}", f"teachers.root={tmp_path / 't'}"])
    metrics = run(config)
    assert metrics["dataset"] == "python" and 0.0 <= metrics["test"]["multimodal"]["accuracy"] <= 1.0


@pytest.mark.parametrize("fusion", list(FUSIONS))
def test_every_fusion_trains_on_a_python_regression(fusion, tmp_path):
    config = load_config(None, ["dataset.name=python", "dataset.factory=own_dataset:synthetic",
                                "dataset.options.task=regression", "method.name=joint", f"model.fusion={fusion}",
                                "model.encoder.hidden=[8]", "trainer.epochs=1", "trainer.progress=false",
                                f"out={tmp_path / 'run'}"])
    metrics = run(config)
    assert metrics["task"] == "regression" and metrics["test"]["multimodal"]["mape"] >= 0.0


@pytest.mark.parametrize("overrides, message", [
    (["dataset.name=python"], "dataset.factory: dataset.name=python needs a factory"),
    (["dataset.name=python", "dataset.factory=own_dataset"], "dataset.factory: 'own_dataset' is not of the form"),
    (["dataset.name=python", "dataset.factory=no_such_module_xyz:make"], "dataset.factory: cannot import no_such_module_xyz"),
    (["dataset.name=python", "dataset.factory=own_dataset:missing"], "dataset.factory: module own_dataset has no function 'missing'"),
    (["dataset.name=python", "dataset.factory=own_dataset:NOT_A_FUNCTION"], "has no function 'NOT_A_FUNCTION'"),
    (["dataset.name=python", "dataset.factory=own_dataset:broken"], "dataset.factory: own_dataset:broken raised RuntimeError: the data server is down"),
    (["dataset.name=python", "dataset.factory=own_dataset:ragged"], "dataset.factory: train item 2 'a' is torch.float32 (5,), item 0 is torch.float32 (4,)"),
    (["dataset.name=python", "dataset.factory=own_dataset:no_label"], "dataset.factory: items need exactly one of 'label'"),
    (["dataset.name=python", "dataset.factory=own_dataset:a_string"], "dataset.factory: own_dataset:a_string returned str"),
    (["dataset.name=python", "dataset.factory=own_dataset:synthetic", "dataset.options.colour=red"], "raised TypeError"),
    (["dataset.factory=own_dataset:synthetic"], "dataset.factory: only dataset.name=python calls a factory"),
])
def test_a_bad_factory_is_one_line_naming_dataset_factory(overrides, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "mfeat", *TINY, "dataset.modalities=[]", *overrides, f"out={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()
