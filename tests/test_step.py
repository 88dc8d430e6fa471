"""The training step as a user's run takes it: SMP's ranking comes from the training split, and
the CLI's G²D run really suppresses the stronger modality in SMP's window."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ROOT, TINY

from g2d.cli import main
from g2d.config import load_config
from g2d.data import load_dataset
from g2d.data.base import Batches, to_device
from g2d.runs.experiment import run
from g2d.training.teachers import load_teacher


def teacher_confidence_on(config, split: str) -> dict[str, float]:
    """Each saved teacher's mean probability of the true class over one split, computed here."""
    data = load_dataset(config.dataset)
    found = {}
    for modality in data.modalities:
        teacher, _ = load_teacher(config, data.select([modality]), modality)
        teacher.eval()
        total, rows = 0.0, 0
        with torch.no_grad():
            for batch in Batches(data.splits[split], 97, shuffle=False):
                inputs = to_device(batch, data, torch.device("cpu"))
                probabilities = teacher({modality: inputs[modality]}).logits.double().softmax(-1)
                total += probabilities.gather(1, batch["label"].view(-1, 1)).sum().item()
                rows += len(batch["label"])
        found[modality] = total / rows
    return found


def test_ranked_smp_ranks_by_the_teachers_training_split_confidence(tmp_path):
    config = load_config(None, [*TINY, "method.name=g2d", "smp.schedule=ranked", f"out={tmp_path / 'run'}",
                                f"teachers.root={tmp_path / 'teachers'}"])
    metrics = run(config)
    recorded = metrics["smp"]["dataset_confidence"]
    train, val = teacher_confidence_on(config, "train"), teacher_confidence_on(config, "val")
    for modality, value in recorded.items():
        assert value == pytest.approx(train[modality], rel=1e-5)
        assert value != pytest.approx(val[modality], rel=1e-5)
    assert metrics["smp"]["ranking"] == sorted(train, key=train.get)


def test_the_cli_g2d_run_suppresses_the_stronger_modality_inside_the_smp_window(tmp_path, capsys):
    out = tmp_path / "run"
    overrides = [*TINY, "trainer.epochs=4", "smp.tau=[2]", f"out={out}", f"teachers.root={tmp_path / 'teachers'}"]
    assert main(["train", str(ROOT / "configs" / "mfeat.yaml"), *overrides]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    weak, strong = metrics["smp"]["ranking"]
    assert metrics["method"] == "g2d" and metrics["smp"]["enabled"] and metrics["smp"]["tau"] == [2]
    history = json.loads((out / "history.json").read_text())
    kappa = [(epoch["train"][f"kappa/{weak}"], epoch["train"][f"kappa/{strong}"]) for epoch in history]
    assert kappa == [(1.0, 0.0), (1.0, 0.0), (1.0, 1.0), (1.0, 1.0)]
