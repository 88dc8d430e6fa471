"""The paper's protocol around the step (issue 23): model selection rules and training-time augmentation."""

import importlib.util
import json
import sys

import pytest
import torch
from conftest import ROOT, TINY, run_interrupted

from g2d.cli import main
from g2d.config import DatasetConfig, load_config
from g2d.data import load_dataset
from g2d.data.augment import IMAGENET_MEAN, IMAGENET_STD, Augmenter, normalize_visual
from g2d.data.base import Batches, ModalitySpec, MultimodalData, to_device
from g2d.errors import G2DError
from g2d.faults import run_outcome
from g2d.methods import build_method
from g2d.models.multimodal import MultimodalModel
from g2d.results.report import run_label
from g2d.results.tables import OPTIMISTIC_MARK, results_table
from g2d.runs.experiment import run
from g2d.training.engine import prepare_training, update_selection

CONFIG = str(ROOT / "configs" / "mfeat.yaml")
JOINT = [*TINY, "method.name=joint", "smp.enabled=false", "trainer.epochs=4"]


def train(tmp_path, name, *extra):
    assert main(["train", CONFIG, *JOINT, f"out={tmp_path / name}", f"teachers.root={tmp_path / 'teachers'}", *extra]) == 0
    return json.loads((tmp_path / name / "metrics.json").read_text())


def scores(accuracy):
    return {"multimodal": {"accuracy": accuracy}, "per_modality": {}}


def test_each_rule_keeps_its_own_epoch():
    """Validation peaks at epoch 1, test at epoch 2, training ends at epoch 3."""
    selection = {rule: {"epoch": -1, "score": float("-inf"), "test": {}} for rule in ("val", "last", "test")}
    for epoch, (val, test) in enumerate([(0.5, 0.6), (0.7, 0.5), (0.6, 0.8), (0.4, 0.7)]):
        update_selection(selection, epoch, scores(val), scores(test), "classification")
    assert {rule: chosen["epoch"] for rule, chosen in selection.items()} == {"val": 1, "last": 3, "test": 2}
    assert [selection[r]["test"]["multimodal"]["accuracy"] for r in ("val", "last", "test")] == [0.5, 0.7, 0.8]


def test_metrics_record_every_selection_rule(tmp_path):
    metrics = train(tmp_path, "run")
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    accuracy = [epoch["test"]["multimodal"]["accuracy"] for epoch in history]
    val = [epoch["val"]["multimodal"]["accuracy"] for epoch in history]
    selection = metrics["selection"]
    assert selection["rule"] == "val" and selection["optimistic"] is False
    assert selection["last"]["best_epoch"] == len(history) - 1
    assert selection["last"]["test"] == history[-1]["test"]
    assert selection["test"]["test"]["multimodal"]["accuracy"] == max(accuracy)
    assert selection["test"]["best_epoch"] == accuracy.index(max(accuracy))
    assert selection["val"]["best_epoch"] == val.index(max(val)) == metrics["best_epoch"]
    # the reported test score is the kept (val-best) epoch's, read again from its saved weights
    assert metrics["test"] == selection["val"]["test"] == history[metrics["best_epoch"]]["test"]
    assert OPTIMISTIC_MARK not in results_table({"joint": metrics}) and OPTIMISTIC_MARK not in run_label(metrics)


def test_select_test_keeps_the_best_test_epoch_and_is_marked_optimistic(tmp_path):
    metrics = train(tmp_path, "run", "trainer.select=test")
    selection = metrics["selection"]
    assert selection["rule"] == "test" and selection["optimistic"] is True
    assert metrics["best_epoch"] == selection["test"]["best_epoch"]
    assert metrics["test"] == selection["test"]["test"]
    table = results_table({"joint": metrics})
    assert f"joint {OPTIMISTIC_MARK}" in table and "optimistic" in table.splitlines()[-1]
    assert run_label(metrics).endswith(OPTIMISTIC_MARK)


def visual_data(rows: int = 32) -> MultimodalData:
    """A 3-channel image modality (augmented), a 1-channel one (not) and a vector one, 3 classes."""
    generator = torch.Generator().manual_seed(0)

    def split() -> dict[str, torch.Tensor]:
        return {"rgb": torch.randint(0, 256, (rows, 3, 16, 16), generator=generator, dtype=torch.uint8),
                "grey": torch.randint(0, 256, (rows, 1, 16, 16), generator=generator, dtype=torch.uint8),
                "vec": torch.randn(rows, 4, generator=generator),
                "label": torch.randint(0, 3, (rows,), generator=generator)}

    return MultimodalData(name="visual", task="classification", num_classes=3,
                          modalities={"rgb": ModalitySpec("image", (3, 16, 16), 1 / 255),
                                      "grey": ModalitySpec("image", (1, 16, 16), 1 / 255),
                                      "vec": ModalitySpec("vector", (4,))},
                          splits={s: split() for s in ("train", "val", "test")})


def test_augmenter_crops_within_the_image_and_flips():
    """A horizontal ramp stays a ramp inside its own range: crops never pad, and some frames run right to left."""
    ramp = torch.linspace(0, 1, 32).expand(64, 3, 32, 32).contiguous()
    out = Augmenter({"rgb": ModalitySpec("image", (3, 32, 32))}, seed=0)({"rgb": ramp}, epoch=0, step=0)["rgb"]
    assert out.min() >= 0 and out.max() <= 1 and not torch.equal(out, ramp)
    rising = out[:, 0, 16, -1] > out[:, 0, 16, 0]
    assert 0 < rising.sum() < 64  # both directions among 64 draws of a flip with p = 1/2
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0, 0], out[:, 0, -1])  # channels and rows alike


def test_augmenter_leaves_the_global_random_streams_alone():
    """Kornia draws from the global CPU generator: the augmenter seeds and restores it around each call."""
    batch = torch.zeros(4, 3, 16, 16)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Augmenter({"rgb": ModalitySpec("image", (3, 16, 16))}, seed=0)({"rgb": batch}, 0, 0)
    assert torch.equal(torch.rand(3), expected)


def test_augmenter_draws_are_fixed_by_seed_epoch_and_step():
    batch = {"rgb": torch.rand(4, 3, 16, 16), "clip": torch.rand(2, 3, 3, 16, 16), "grey": torch.rand(4, 1, 16, 16)}
    specs = {"rgb": ModalitySpec("image", (3, 16, 16)), "clip": ModalitySpec("video", (3, 3, 16, 16)),
             "grey": ModalitySpec("image", (1, 16, 16))}
    augmenter = Augmenter(specs, seed=0)
    first = augmenter(batch, epoch=1, step=2)
    assert torch.equal(first["rgb"], augmenter(batch, epoch=1, step=2)["rgb"])
    assert not torch.equal(first["rgb"], augmenter(batch, epoch=1, step=3)["rgb"])
    assert not torch.equal(first["rgb"], Augmenter(specs, seed=1)(batch, epoch=1, step=2)["rgb"])
    assert not torch.equal(first["rgb"], batch["rgb"]) and not torch.equal(first["clip"], batch["clip"])
    assert first["clip"].shape == batch["clip"].shape and torch.equal(first["grey"], batch["grey"])


@pytest.mark.parametrize("augment", [True, False])
def test_training_steps_see_augmented_batches_only_when_asked(augment):
    data = visual_data()
    data.deterministic = not augment
    config = load_config(None, ["model.encoder.width=4", "model.encoder.hidden=[8]", "trainer.batch_size=8",
                                "method.name=joint", "smp.enabled=false", f"dataset.augment={augment}"])
    torch.manual_seed(0)
    model = MultimodalModel(data.modalities, config.model, 3)
    method = build_method(config.method, data.task, list(data.modalities))
    batches = Batches(data.splits["train"], 8, shuffle=False, seed=0)
    _, path = prepare_training(model, method, data, config, torch.device("cpu"), batches)
    seen = []
    train_step = method.train_step
    method.train_step = lambda inputs, epoch: seen.append(inputs) or train_step(inputs, epoch)
    raw = next(iter(path.batches(0)))
    path.step(raw, 0)
    expected = to_device(raw, data, torch.device("cpu"))
    assert torch.equal(seen[0]["rgb"], expected["rgb"]) is not augment
    assert torch.equal(seen[0]["grey"], expected["grey"]) and torch.equal(seen[0]["vec"], expected["vec"])


def test_killed_augmented_run_resumes_bit_identical(tmp_path, monkeypatch):
    overrides = ["model.encoder.width=4", "model.encoder.hidden=[8]", "trainer.batch_size=8", "trainer.epochs=3",
                 "method.name=joint", "smp.enabled=false", "dataset.augment=true", "trainer.progress=false",
                 f"teachers.root={tmp_path / 'teachers'}"]
    whole = load_config(None, [*overrides, f"out={tmp_path / 'whole'}"])
    run(whole, visual_data())
    killed = load_config(None, [*overrides, f"out={tmp_path / 'killed'}"])
    run_interrupted(monkeypatch, killed, after_epochs=1, data=visual_data())
    run(load_config(None, [*overrides, f"out={tmp_path / 'killed'}", "trainer.resume=true"]), visual_data())
    assert run_outcome(tmp_path / "killed") == run_outcome(tmp_path / "whole")
    metrics = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert metrics["environment"]["training_path"]["teacher_cache"] is False


def test_normalize_standardises_visual_channels_by_hand():
    """Pixel 0 reads -mean/std and pixel 255 reads (1 - mean)/std per channel; other modalities are untouched."""
    data = normalize_visual(visual_data())
    batch = {"rgb": torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 16, 16),
             "grey": torch.full((2, 1, 16, 16), 255, dtype=torch.uint8), "vec": torch.ones(2, 4)}
    x = to_device(batch, data, torch.device("cpu"))
    for c, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD)):
        assert torch.allclose(x["rgb"][0, c], torch.full((16, 16), -mean / std))
        assert torch.allclose(x["rgb"][1, c], torch.full((16, 16), (1 - mean) / std))
    assert torch.equal(x["grey"], torch.ones(2, 1, 16, 16)) and torch.equal(x["vec"], torch.ones(2, 4))
    assert visual_data().modalities["rgb"].mean is None  # the loader's own specs are not changed in place


def test_normalize_is_refused_without_a_visual_modality():
    with pytest.raises(G2DError, match=r"config key dataset.normalize: mfeat has no video or 3-channel image"):
        load_dataset(DatasetConfig(name="mfeat", normalize=True))


def test_teachers_record_normalisation_and_a_student_with_other_inputs_refuses_them(tmp_path):
    overrides = ["model.encoder.width=4", "model.encoder.hidden=[8]", "trainer.batch_size=8", "trainer.epochs=1",
                 "method.name=g2d", "smp.enabled=false", "trainer.progress=false", f"teachers.root={tmp_path / 't'}"]
    run(load_config(None, [*overrides, "dataset.normalize=true", f"out={tmp_path / 'a'}"]), visual_data())
    teacher = json.loads(next((tmp_path / "t").rglob("teacher_rgb/teacher.json")).read_text())
    assert teacher["input"]["normalize"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    grey = json.loads(next((tmp_path / "t").rglob("teacher_grey/teacher.json")).read_text())
    assert "normalize" not in grey["input"]
    with pytest.raises(G2DError, match=r"teacher field 'input'"):
        run(load_config(None, [*overrides, f"out={tmp_path / 'b'}"]), visual_data())


def test_committed_paper_tables_are_generated_from_the_committed_raw_results():
    """docs/results/paper_tables.md is what the script renders from paper_tables.csv, 5 seeds per configuration."""
    spec = importlib.util.spec_from_file_location("paper_tables", ROOT / "benchmarks" / "paper_tables.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # its dataclass looks its module up there
    spec.loader.exec_module(script)
    table = script.read_rows(script.CSV_PATH)
    assert {label: sorted(runs) for label, runs in table.items()} == {label: [0, 1, 2, 3, 4] for label in script.POINTS}
    page = script.render(table, json.loads(script.META_PATH.read_text()))
    assert page == script.TABLES_PATH.read_text()
