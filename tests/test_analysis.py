"""Analyses against known answers, the per-epoch table, and ``g2d analyze`` on a tiny real run."""

import csv
import json
import math

import pytest
import torch

from g2d.cli import main
from g2d.models.fusion import build_fusion
from g2d.results import analysis
from g2d.results.analysis import (
    centroid_gap,
    fused_logits,
    linear_probe,
    macro_f1,
    mean_cosine,
    pca_2d,
    shapley_values,
)
from g2d.training.evaluate import classification_metrics, regression_metrics


def test_alignment_of_identical_features_is_one_and_of_opposite_minus_one() -> None:
    x = torch.randn(50, 8)
    assert mean_cosine(x, x) == pytest.approx(1.0)
    assert mean_cosine(x, -x) == pytest.approx(-1.0)
    orthogonal = mean_cosine(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]]))
    assert orthogonal == pytest.approx(0.0)


def test_macro_f1_by_hand() -> None:
    predictions = torch.tensor([0, 0, 1, 1, 2])
    labels = torch.tensor([0, 1, 1, 1, 2])
    # class 0: tp 1, 2 predicted, 1 true -> 2/3; class 1: tp 2, 2 predicted, 3 true -> 4/5; class 2: 1
    assert macro_f1(predictions, labels, 3) == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)
    # a class absent from both is skipped, not counted as 0
    assert macro_f1(predictions, labels, 5) == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)


def test_shapley_of_an_additive_game_is_each_weight_and_a_null_player_gets_zero() -> None:
    weights = {"a": 0.5, "b": 0.2, "c": 0.0}
    values = shapley_values(list(weights), lambda s: sum(weights[p] for p in s))
    assert values == pytest.approx(weights)
    # a pure synergy: only both together score 1 -> each gets half
    pair = shapley_values(["a", "b"], lambda s: float(len(s) == 2))
    assert pair == pytest.approx({"a": 0.5, "b": 0.5})
    # efficiency: values sum to v(all) - v(none)
    game = {frozenset(): 0.1, frozenset("a"): 0.7, frozenset("b"): 0.3, frozenset("ab"): 0.9}
    assert sum(shapley_values(["a", "b"], game.__getitem__).values()) == pytest.approx(0.8)


def test_linear_probe_on_features_that_encode_the_label_reaches_100_percent() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    features = 3.0 * torch.nn.functional.one_hot(labels, 4).float() + 0.1 * torch.randn(200, 4, generator=generator)
    result = linear_probe(features[:150], labels[:150], features[150:], labels[150:], "classification", 4)
    assert result["accuracy"] == 1.0 and result["macro_f1"] == 1.0
    noise = torch.randn(200, 4, generator=generator)
    chance = linear_probe(noise[:150], labels[:150], noise[150:], labels[150:], "classification", 4)
    assert chance["accuracy"] < 0.6


def test_linear_probe_regression_recovers_a_linear_target() -> None:
    x = torch.linspace(-1, 1, 100).unsqueeze(1)
    y = 0.5 + 0.3 * x.squeeze(1)
    result = linear_probe(x[::2], y[::2], x[1::2], y[1::2], "regression", 1)
    assert result["mse"] < 1e-4


def test_modality_gap_and_pca_known_answers() -> None:
    first = torch.tensor([[2.0, 0.0], [5.0, 0.0]])
    second = torch.tensor([[0.0, 1.0], [0.0, 7.0]])
    assert centroid_gap(first, second) == pytest.approx(math.sqrt(2))
    assert centroid_gap(first, first) == pytest.approx(0.0)
    line = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    projected = pca_2d(line)
    assert projected[:, 0].tolist() == pytest.approx([-1.0, 0.0, 1.0])
    assert projected[:, 1].abs().max().item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("fusion", ["late", "sum", "concat", "film", "gated", "cross_attention"])
def test_absent_modalities_follow_each_fusions_rule(fusion) -> None:
    torch.manual_seed(0)
    modalities, dims = ["a", "b"], {"a": 4, "b": 4}
    module = build_fusion(fusion, modalities, dims, 3)
    model = torch.nn.Module()
    model.fusion, model.modalities = module, modalities
    features = {m: torch.randn(5, 4) for m in modalities}
    fused, per_modality = module(features)
    prior = torch.tensor([0.1, 0.2, 0.3])
    with torch.no_grad():
        assert torch.allclose(fused_logits(model, features, frozenset(modalities), prior), fused, atol=1e-6)
        assert torch.equal(fused_logits(model, features, frozenset(), prior), prior.expand(5, -1))
        alone = fused_logits(model, features, frozenset({"a"}), prior)
    if fusion == "late":  # the mean over the present heads is that head
        expected = module.heads["a"](features["a"])
    elif fusion == "sum":
        expected = module.heads["a"](features["a"])
    elif fusion == "concat":  # a's share of the logits plus the whole bias
        expected = per_modality["a"] + module.head.bias * (1 - 1 / 2)
    else:  # the fusion's own deactivation, which is how it forms a's logits
        expected = per_modality["a"]
    assert torch.allclose(alone, expected, atol=1e-6)


def test_confidence_in_metrics_by_hand() -> None:
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]))
    # the probability of the true class, not of the predicted one: row 0's label is class 1 (0.2)
    assert classification_metrics(logits, torch.tensor([1, 2]))["confidence"] == pytest.approx((0.2 + 0.5) / 2)
    # regression: sigmoid(0) = 0.5 against targets 0.25 and 1.0 -> 1 - (0.25 + 0.5) / 2
    assert regression_metrics(torch.zeros(2, 1), torch.tensor([0.25, 1.0]))["confidence"] == pytest.approx(0.625)


def test_epochs_csv_holds_one_row_per_epoch_and_modality(tiny_runs) -> None:
    folder = tiny_runs["g2d"]
    rows = list(csv.DictReader(open(folder / "epochs.csv")))
    history = json.loads((folder / "history.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    assert [(int(r["epoch"]), r["modality"]) for r in rows] == [(e, m) for e in range(3) for m in ("pix", "mor")]
    weakest = metrics["smp"]["ranking"][0]
    for row in rows:
        epoch, m = int(row["epoch"]), row["modality"]
        record = history[epoch]
        assert float(row["val_confidence"]) == pytest.approx(record["val"]["per_modality"][m]["confidence"])
        assert float(row["val_accuracy"]) == pytest.approx(record["val"]["per_modality"][m]["accuracy"])
        assert float(row["train_loss"]) == pytest.approx(record["train"]["loss"])
        # tau = [1]: in epoch 0 only the weakest modality learns, then both; kappa agrees with SMP's choice
        allowed = 1.0 if epoch >= 1 or m == weakest else 0.0
        assert (int(row["smp_phase"]), float(row["smp_allowed"])) == (min(epoch, 1), allowed)
        assert float(row["kappa"]) == allowed
        assert 0.0 < float(row["teacher_val_confidence"]) <= 1.0
    # a teacher's own table is its confidence over training (the paper's Fig. 3)
    teacher_rows = list(csv.DictReader(open(folder.parent / "teachers" / "teacher_pix" / "epochs.csv")))
    assert [r["smp_phase"] for r in teacher_rows] == ["-1"] * 3 and all(r["val_confidence"] for r in teacher_rows)


def test_analysis_of_a_real_run_agrees_with_its_metrics(tiny_runs) -> None:
    folder = tiny_runs["g2d"]
    result = json.loads((folder / "analysis" / "analysis.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    full = result["subsets"][0]
    assert full["present"] == ["pix", "mor"]
    assert full["accuracy"] == pytest.approx(metrics["test"]["multimodal"]["accuracy"])
    for m in ("pix", "mor"):
        entry = result["per_modality"][m]
        assert entry["inside"]["accuracy"] == pytest.approx(metrics["test"]["per_modality"][m]["accuracy"])
        assert entry["teacher"]["accuracy"] == pytest.approx(metrics["teachers"][m]["accuracy"])
        assert entry["confidence_ratio"] == pytest.approx(entry["inside"]["confidence"] / entry["teacher"]["confidence"])
        # late fusion: with the other modality absent the model is that modality's head
        alone = next(r for r in result["subsets"] if r["present"] == [m])
        assert alone["accuracy"] == pytest.approx(entry["inside"]["accuracy"])
    clean = [r for r in result["noise"] if r["sigma"] == 0.0]
    assert all(r["accuracy"] == full["accuracy"] for r in clean)
    empty = result["subsets"][-1]
    assert empty["present"] == [] and sum(result["shapley"].values()) == pytest.approx(full["accuracy"] - empty["accuracy"])
    embedding = list(csv.DictReader(open(folder / "analysis" / "embedding.csv")))
    assert {r["modality"] for r in embedding} == {"pix", "mor"} and len(embedding) == 2 * analysis.EMBEDDING_POINTS


def test_a_modality_without_information_has_zero_shapley_and_its_absence_costs_nothing(tiny_runs) -> None:
    loaded = analysis.load_run(tiny_runs["joint"])
    with torch.no_grad():  # mor's head reads nothing: its logits are zero for every input
        loaded.model.fusion.heads["mor"].weight.zero_()
        loaded.model.fusion.heads["mor"].bias.zero_()
    result, _ = analysis.analyze(loaded, torch.device("cpu"), noise_levels=(0.0, 2.0))
    score = {tuple(r["present"]): r["accuracy"] for r in result["subsets"]}
    assert score[("pix", "mor")] == score[("pix",)]
    assert result["shapley"]["mor"] == pytest.approx(0.0, abs=1e-12)
    assert result["shapley"]["pix"] == pytest.approx(score[("pix", "mor")] - score[()])
    noisy_mor = [r["accuracy"] for r in result["noise"] if r["modality"] == "mor"]
    assert noisy_mor[0] == noisy_mor[1]  # noise on an ignored modality changes nothing
    noisy_pix = [r["accuracy"] for r in result["noise"] if r["modality"] == "pix"]
    assert noisy_pix[1] < noisy_pix[0]


def test_alignment_before_training_shows_an_encoder_that_starts_from_its_teachers_weights(tiny_runs) -> None:
    """Against untrained teachers (each built under the run's seed, as a teacher is), the first-built
    encoder of the untrained student has exactly its teacher's weights: alignment 1; the second one not."""
    from g2d.models.multimodal import MultimodalModel
    from g2d.training.engine import seed_everything
    from g2d.training.teachers import output_size

    loaded = analysis.load_run(tiny_runs["g2d"])
    for m in ("pix", "mor"):
        seed_everything(loaded.config.seed)
        single = loaded.data.select([m])
        loaded.teachers[m] = MultimodalModel(single.modalities, loaded.config.model, output_size(single))
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    result, _ = analysis.analyze(loaded, torch.device("cpu"), noise_levels=(0.0,))
    assert result["per_modality"]["pix"]["alignment_at_start"] == pytest.approx(1.0, abs=1e-6)
    assert result["per_modality"]["mor"]["alignment_at_start"] < 0.99
    assert result["per_modality"]["pix"]["alignment"] < 0.99  # the trained student moved away from it
    assert torch.equal(torch.rand(1), before)  # rebuilding the untrained student left the global RNG as it was


def test_analyze_cli_refuses_bad_input_and_keeps_an_existing_analysis(tiny_runs, tmp_path, capsys) -> None:
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"g2d: error: run folder not found: {tmp_path / 'missing'}"
    (tmp_path / "empty").mkdir()
    assert main(["analyze", str(tmp_path / "empty")]) == 2
    assert "metrics.json" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "analysis").exists()
    target = tiny_runs["joint"] / "analysis" / "analysis.json"
    before = target.read_bytes()
    assert main(["analyze", str(tiny_runs["joint"])]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert target.read_bytes() == before
    assert main(["analyze", str(tiny_runs["joint"] / ".." / "teachers" / "teacher_pix")]) == 2
    assert "teacher" in capsys.readouterr().err
