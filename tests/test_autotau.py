"""``smp.tau: auto``: phases end at a plateau of their modality's validation score, in order, never
from the test split, and a resumed run ends them at the same epochs as an uninterrupted one."""

import dataclasses
import json

import pytest
import torch
from conftest import TINY, run_interrupted
from torch import nn

from g2d.config import AutoTauConfig, SMPConfig, load_config
from g2d.core.autotau import AutoTau
from g2d.core.smp import Modulator, phase_of
from g2d.data import load_dataset
from g2d.errors import G2DError
from g2d.runs.experiment import run


def scripted_val(scores: dict[str, float]) -> dict:
    return {"multimodal": {"accuracy": 0.0}, "per_modality": {m: {"accuracy": s} for m, s in scores.items()}}


def modulator_for(modalities: list[str], confidence: list[float], epochs: int, schedule: str = "ranked",
                  **auto) -> Modulator:
    encoders = {m: list(nn.Linear(2, 2).parameters()) for m in modalities}
    modulator = Modulator(SMPConfig(schedule=schedule, tau="auto", auto=AutoTauConfig(**auto)), encoders, epochs)
    modulator.set_dataset_confidence(torch.tensor(confidence))
    return modulator


def rising_then_flat(epoch: int, plateau: int) -> float:
    """Accuracy that rises by 0.05 per epoch up to ``plateau``, then stays put up to noise of 0.004."""
    return 0.3 + 0.05 * min(epoch, plateau) + (0.004 if epoch > plateau and epoch % 2 else 0.0)


def test_phase_ends_within_the_patience_of_a_known_plateau():
    rule = AutoTau(AutoTauConfig(patience=3, min_delta=0.01, max_share=0.9), phases=1, epochs=100)
    plateau = 7
    epoch = 0
    while not rule.observe(epoch, rising_then_flat(epoch, plateau)):
        epoch += 1
    # The last improvement is epoch 7; epochs 8, 9, 10 do not improve by more than min_delta.
    assert epoch == plateau + 3
    assert rule.chosen == [plateau + 4] and rule.ended_by == ["plateau"]


def test_noise_above_min_delta_counts_as_improvement():
    rule = AutoTau(AutoTauConfig(patience=3, min_delta=0.0, max_share=0.9), phases=1, epochs=100)
    ended = [rule.observe(epoch, rising_then_flat(epoch, 7)) for epoch in range(12)]
    assert not any(ended)  # 0.004 wiggles are improvements when min_delta is 0


def test_phase_that_keeps_improving_ends_at_max_share():
    rule = AutoTau(AutoTauConfig(patience=2, max_share=0.25), phases=1, epochs=40)
    ended = [rule.observe(epoch, 0.01 * epoch) for epoch in range(12)]
    assert ended.index(True) == 9 and rule.chosen == [10] and rule.ended_by == ["max_share"]


@pytest.mark.parametrize("schedule", ["ranked", "dynamic"])
def test_three_modalities_give_two_boundaries_in_order_each_judged_on_its_own_modality(schedule):
    # Ranking by teacher confidence over the training set: mor (weakest), fou, pix.
    modulator = modulator_for(["pix", "fou", "mor"], [0.9, 0.7, 0.5], epochs=100, schedule=schedule, patience=2,
                              min_delta=0.01, max_share=0.3)
    assert modulator.needs_dataset_confidence
    assert modulator.tau == [30, 30] and modulator.window == 60
    phases = []
    for epoch in range(60):
        phases.append(phase_of(epoch, modulator.tau))
        assert modulator.active(epoch) == (phases[-1] < 2)
        # mor plateaus at epoch 4; fou rises until epoch 12, then stalls; pix always improves.
        modulator.end_epoch(epoch, scripted_val({"mor": rising_then_flat(epoch, 4),
                                                  "fou": rising_then_flat(epoch, 12) - 0.004,
                                                  "pix": 0.01 * epoch}), "classification")
    assert modulator.auto.chosen == [7, 8] and modulator.auto.ended_by == ["plateau", "plateau"]
    assert phases[:7] == [0] * 7 and phases[7:15] == [1] * 8 and set(phases[15:]) == {2}
    assert modulator.tau == [7, 8] and modulator.window == 15
    # Per batch, the dynamic schedule still ranks by that batch's confidence within the chosen phases.
    batch = torch.tensor([0.2, 0.6, 0.9]) if schedule == "dynamic" else torch.tensor([0.5, 0.5, 0.5])
    expected = {"dynamic": [[1, 0, 0], [0, 1, 0]], "ranked": [[0, 0, 1], [0, 1, 0]]}[schedule]
    assert [modulator.coefficients(epoch, batch).tolist() for epoch in (6, 7)] == expected
    report = modulator.auto_report(60)
    assert [(p["modality"], p["start"], p["epochs"]) for p in report["phases"]] == [("mor", 0, 7), ("fou", 7, 8)]


def test_auto_state_restores_mid_phase():
    first = modulator_for(["a", "b"], [0.2, 0.8], epochs=50, patience=3, min_delta=0.01)
    for epoch in range(6):
        first.end_epoch(epoch, scripted_val({"a": rising_then_flat(epoch, 4), "b": 0.0}), "classification")
    second = modulator_for(["a", "b"], [0.2, 0.8], epochs=50, patience=3, min_delta=0.01)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for modulator in (first, second):
        for epoch in range(6, 10):
            modulator.end_epoch(epoch, scripted_val({"a": rising_then_flat(epoch, 4), "b": 0.0}), "classification")
    assert first.auto.chosen == second.auto.chosen == [8]


def test_bad_auto_settings_name_the_key(tmp_path):
    assert load_config(None, ["smp.tau=auto"]).smp.tau == "auto"
    assert load_config(None, ["smp.tau=[5]"]).smp.tau == [5]
    for override, key in (("smp.tau=sometimes", "smp.tau"), ("smp.tau=5", "smp.tau"),
                          ("smp.auto.max_share=1.5", "smp.auto.max_share"), ("smp.auto.patience=0", "smp.auto.patience"),
                          ("smp.auto.max_share=0.8 dataset.modalities=[pix,fou,mor]", "smp.auto.max_share")):
        config = load_config(None, [*TINY, "smp.tau=auto", *override.split(), f"out={tmp_path / 'bad'}",
                                    f"teachers.root={tmp_path / 'teachers'}"])
        with pytest.raises(G2DError, match=key.replace(".", r"\.")):
            run(config)
        assert not (tmp_path / "bad").exists()


AUTO = ["trainer.epochs=8", "teachers.epochs=2", "smp.tau=auto", "smp.auto.patience=1", "smp.auto.min_delta=0.05",
        "smp.auto.max_share=0.5", "optim.lr=0.2"]


def auto_config(tmp_path, name, *extra):
    return load_config(None, [*TINY, *AUTO, f"out={tmp_path / name}", f"teachers.root={tmp_path / 'teachers'}", *extra])


@pytest.fixture(scope="module")
def mfeat():
    return load_dataset(load_config(None, [*TINY, "dataset.modalities=[]"]).dataset)


def test_auto_run_records_its_phases_ignores_the_test_split_and_resumes_to_the_same_boundaries(
        tmp_path, monkeypatch, mfeat):
    whole = run(auto_config(tmp_path, "whole"), mfeat)
    smp = whole["smp"]
    history = json.loads((tmp_path / "whole" / "history.json").read_text())
    (phase,) = smp["phases"]
    assert phase["modality"] == smp["ranking"][0] and smp["tau_chosen"] == [phase["epochs"]]
    assert phase["ended_by"] == "plateau"  # a 5-point gain every epoch until the cap is not to be expected
    assert [r["smp_phase"] for r in history] == [0] * phase["epochs"] + [1] * (8 - phase["epochs"])

    # The test split, replaced by noise with shuffled labels, changes no phase and no validation number.
    poisoned_test = {k: (torch.randn_like(v) if v.is_floating_point() else v.flip(0))
                     for k, v in mfeat.splits["test"].items()}
    poisoned = dataclasses.replace(mfeat, splits={**mfeat.splits, "test": poisoned_test})
    other = run(auto_config(tmp_path, "poisoned"), poisoned)
    assert other["smp"]["phases"] == smp["phases"] and other["val"] == whole["val"]
    assert other["test"] != whole["test"]
    poisoned_history = json.loads((tmp_path / "poisoned" / "history.json").read_text())
    assert [(r["val"], r["smp_phase"]) for r in poisoned_history] == [(r["val"], r["smp_phase"]) for r in history]

    # Interrupted inside the phase: its best score so far must survive the restart.
    run_interrupted(monkeypatch, auto_config(tmp_path, "split"), after_epochs=phase["epochs"] - 1, data=mfeat)
    resumed = run(auto_config(tmp_path, "split", "trainer.resume=true"), mfeat)
    assert resumed["smp"]["phases"] == smp["phases"]
    resumed_history = json.loads((tmp_path / "split" / "history.json").read_text())
    assert [r["smp_phase"] for r in resumed_history] == [r["smp_phase"] for r in history]
    assert (tmp_path / "split" / "checkpoints" / "last.safetensors").read_bytes() == \
        (tmp_path / "whole" / "checkpoints" / "last.safetensors").read_bytes()
