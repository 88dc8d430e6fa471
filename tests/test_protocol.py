"""The paper's protocol around the step (issue 23): model selection rules and training-time augmentation."""

import json

from conftest import ROOT, TINY

from g2d.cli import main
from g2d.results.report import run_label
from g2d.results.tables import OPTIMISTIC_MARK, results_table
from g2d.training.engine import update_selection

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
