"""Regression end to end: the loss terms, confidence and metrics by hand, every method through ``g2d train``,
model selection on validation MSE, and three-modality G²D on mfeat with SMP and cross-validation."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY

from g2d.cli import main
from g2d.config import load_config
from g2d.core.losses import logit_distillation, task_loss, teacher_confidence
from g2d.methods import METHODS
from g2d.results.tables import fold_table
from g2d.runs.crossval import run_folds
from g2d.training.evaluate import regression_metrics, selection_score

MFEAT = str(ROOT / "configs" / "mfeat.yaml")
MFEAT3 = str(ROOT / "configs" / "mfeat3.yaml")


def logit(p):
    p = torch.tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p))


def test_regression_metrics_by_hand_on_the_original_scale():
    # sigmoid outputs 0.25, 0.5, 0.75 and targets 0.5, 0.5, 1.0 on [0, 1]; offset 10, span 20 give
    # predictions 15, 20, 25 against targets 20, 20, 30 on the dataset's scale.
    metrics = regression_metrics(logit([0.25, 0.5, 0.75]).unsqueeze(-1), torch.tensor([0.5, 0.5, 1.0]), 10.0, 20.0)
    assert metrics["mse"] == pytest.approx((0.25**2 + 0 + 0.25**2) / 3)
    assert metrics["loss"] == metrics["mse"]
    assert metrics["mape"] == pytest.approx(100 * (5 / 20 + 0 / 20 + 5 / 30) / 3)
    mean = 70 / 3
    assert metrics["r2"] == pytest.approx(1 - 50 / (2 * (20 - mean) ** 2 + (30 - mean) ** 2))
    assert metrics["r2"] == pytest.approx(0.25)


def test_regression_task_loss_logit_distillation_and_confidence_by_hand():
    labels = torch.tensor([0.5, 1.0])
    student = logit([0.25, 0.75]).float().unsqueeze(-1)
    assert task_loss(student, labels, "regression").item() == pytest.approx((0.25**2 + 0.25**2) / 2)
    teacher = {"a": logit([0.5, 0.5]).float().unsqueeze(-1)}
    assert logit_distillation(student, teacher, "regression")["a"].item() == pytest.approx(0.0625)
    # Teachers predict 0.25, 0.75 (errors 0.25, 0.25) and 0.75, 0.5 (errors 0.25, 0.5).
    stacked = torch.stack([logit([0.25, 0.75]), logit([0.75, 0.5])]).float().unsqueeze(-1)
    confidence = teacher_confidence(stacked, labels, "regression")
    assert confidence.tolist() == pytest.approx([1 - 0.25, 1 - 0.375])


def test_regression_selection_score_is_minus_validation_mse():
    assert selection_score({"multimodal": {"mse": 0.2, "mape": 1.0, "r2": 0.9}}, "regression") == -0.2


@pytest.fixture(scope="module")
def regression_csv(tmp_path_factory):
    """60 rows, target = 3 + 4 * (x0 + 0.5 * x1) + noise, seen by a tabular modality and an npy vector modality."""
    folder = tmp_path_factory.mktemp("regression_csv")
    rng = np.random.default_rng(0)
    lines = ["vec,tab:x0,tab:x1,target"]
    for row in range(60):
        x = rng.normal(size=2)
        vector = np.concatenate([x[:1] + 0.3 * rng.normal(size=1), rng.normal(size=3)]).astype(np.float32)
        np.save(folder / f"v{row}.npy", vector)
        lines.append(f"v{row}.npy,{x[0]:.5f},{x[1]:.5f},{3 + 4 * (x[0] + 0.5 * x[1]) + 0.1 * rng.normal():.5f}")
    (folder / "index.csv").write_text("\n".join(lines) + "\n")
    return folder / "index.csv", tmp_path_factory.mktemp("regression_teachers")


def test_classification_only_methods_refuse_regression_naming_the_key(regression_csv, tmp_path, capsys):
    index, teachers = regression_csv
    for method in sorted(m for m, cls in METHODS.items() if "regression" not in cls.tasks):
        assert main(["train", MFEAT, "dataset.name=csv", f"dataset.root={index}", "dataset.modalities=[]",
                     f"method.name={method}", f"out={tmp_path / method}"]) == 2
        assert f"method.name: {method} supports classification only" in capsys.readouterr().err


@pytest.mark.parametrize("method", sorted(m for m, cls in METHODS.items() if "regression" in cls.tasks))
def test_every_method_trains_a_regression_dataset_with_teachers_and_smp(method, regression_csv, tmp_path, capsys):
    index, teachers = regression_csv
    out = tmp_path / "run"
    overrides = ["dataset.name=csv", f"dataset.root={index}", "dataset.modalities=[]", f"method.name={method}",
                 "smp.enabled=true", "smp.tau=[1]", "model.encoder.hidden=[8]", "trainer.epochs=3",
                 "trainer.batch_size=8", "trainer.progress=false", "optim.lr=0.05", f"out={out}",
                 f"teachers.root={teachers}", "method.mla.test_fusion=fixed"]
    assert main(["train", MFEAT, *overrides]) == 0
    assert "test MAPE" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["task"], metrics["method"], metrics["modalities"]) == ("regression", method, ["vec", "tab"])
    for scores in [metrics["test"]["multimodal"], *metrics["test"]["per_modality"].values(),
                   *metrics["teachers"].values()]:
        assert set(scores) == {"mse", "loss", "confidence", "mape", "r2"} and all(math.isfinite(v) for v in scores.values())
    assert set(metrics["smp"]["dataset_confidence"]) == {"vec", "tab"}
    assert all(0 <= c <= 1 for c in metrics["smp"]["dataset_confidence"].values())
    history = json.loads((out / "history.json").read_text())
    weakest = metrics["smp"]["ranking"][0]
    weak, strong = (history[0]["train"][f"kappa/{m}"] for m in metrics["smp"]["ranking"])
    assert strong == 0.0 and weak > 0.0  # SMP's kappa times the method's own coefficient, if any
    if method not in ("ogm_ge", "agm"):
        assert weak == 1.0
    assert weakest == min(metrics["smp"]["dataset_confidence"], key=metrics["smp"]["dataset_confidence"].get)
    val_mse = [h["val"]["multimodal"]["mse"] for h in history]
    assert metrics["best_epoch"] == int(np.argmin(val_mse))
    assert metrics["val"]["multimodal"]["mse"] == val_mse[metrics["best_epoch"]]


def mfeat3_overrides(tmp_path):
    return [o for o in TINY if not o.startswith("dataset.modalities")] + [
        "smp.tau=[1,1]", f"out={tmp_path / 'run'}", f"teachers.root={tmp_path / 'teachers'}"]


def test_three_modalities_on_mfeat3_each_lead_in_turn(tmp_path):
    assert main(["train", MFEAT3, *mfeat3_overrides(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["modalities"] == ["pix", "fou", "mor"] and set(metrics["teachers"]) == {"pix", "fou", "mor"}
    ranking = metrics["smp"]["ranking"]
    assert sorted(ranking) == ["fou", "mor", "pix"] and metrics["smp"]["tau"] == [1, 1]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    for epoch, leader in enumerate(ranking[:2]):
        assert {m: history[epoch]["train"][f"kappa/{m}"] for m in ranking} == {m: float(m == leader) for m in ranking}
    assert all(history[2]["train"][f"kappa/{m}"] == 1.0 for m in ranking)


def test_cross_validation_runs_each_fold_with_its_own_teachers(tmp_path):
    overrides = [o for o in TINY if not o.startswith("dataset.modalities")] + ["dataset.modalities=[pix,mor]"]
    results = run_folds(ROOT / "configs" / "mfeat3.yaml", overrides, 2, tmp_path, ["joint", "g2d"], log=lambda _: None)
    assert len(results["teachers"]) == len(results["joint"]) == len(results["g2d"]) == 2
    for fold in range(2):
        config = json.loads((tmp_path / f"fold{fold}" / "teachers" / "teacher_pix" / "teacher.json").read_text())
        assert config["modality"] == "pix"
        assert results["g2d"][fold]["teachers"] == results["teachers"][fold]
    fingerprints = {json.loads((tmp_path / f"fold{f}" / "teachers" / "teacher_pix" / "teacher.json").read_text())
                    ["data_fingerprint"] for f in range(2)}
    assert len(fingerprints) == 2
    table = fold_table(results)
    accuracies = [100 * r["test"]["multimodal"]["accuracy"] for r in results["g2d"]]
    g2d_row = next(line for line in table.splitlines() if line.startswith("| G²D"))
    assert g2d_row.split(" | ")[1] == f"{np.mean(accuracies):.1f} ± {np.std(accuracies, ddof=1):.1f}"
    assert "| pix alone (teacher) |" in table and "| Joint-Train |" in table


def test_fold_runs_default_to_per_fold_teacher_folders():
    config = load_config(MFEAT3, ["dataset.folds=5", "dataset.fold=3", "out=runs/x/g2d"])
    assert str(config.teachers_dir()) == "runs/x/teachers/mfeat_fold3_seed0"
    assert str(load_config(MFEAT3, ["out=runs/x/g2d"]).teachers_dir()) == "runs/x/teachers/mfeat_seed0"


def test_analyze_and_report_a_regression_run(regression_csv, tmp_path):
    """Regression runs get MSE in place of accuracy everywhere: probes, subsets, Shapley, noise, report."""
    index, teachers = regression_csv
    out = tmp_path / "run"
    assert main(["train", MFEAT, "dataset.name=csv", f"dataset.root={index}", "dataset.modalities=[]",
                 "method.name=g2d", "smp.tau=[1]", "model.encoder.hidden=[8]", "trainer.epochs=3",
                 "trainer.batch_size=8", "trainer.progress=false", "optim.lr=0.05", f"out={out}",
                 f"teachers.root={teachers}"]) == 0
    assert main(["analyze", str(out)]) == 0
    result = json.loads((out / "analysis" / "analysis.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    full = result["subsets"][0]
    assert full["mse"] == pytest.approx(metrics["test"]["multimodal"]["mse"])
    assert all(set(row) == {"present", "absent", "mse"} for row in result["subsets"])
    # Shapley values in minus-MSE units add up to the full model's gain over the mean-target prior
    gain = result["subsets"][-1]["mse"] - full["mse"]
    assert sum(result["shapley"].values()) == pytest.approx(gain)
    for entry in result["per_modality"].values():
        assert set(entry["probe"]) == {"mse"} and 0.0 <= entry["teacher"]["confidence"] <= 1.0
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert "multimodal MSE" in (tmp_path / "report" / "report.md").read_text()
