"""The training loop: resume equals an uninterrupted run, NaN stops cleanly, no per-step host sync."""

import json

import pytest
import torch
from conftest import TINY, count_host_reads, run_interrupted

from g2d.config import load_config
from g2d.errors import G2DError
from g2d.runs.experiment import run


def config_for(tmp_path, name, *extra):
    return load_config(None, [*TINY, "method.name=g2d", "smp.schedule=dynamic", "smp.tau=[1]",
                              f"out={tmp_path / name}", f"teachers.root={tmp_path / 'teachers'}", *extra])


def test_resumed_run_matches_uninterrupted_run(tmp_path, monkeypatch):
    run(config_for(tmp_path, "whole"))
    run_interrupted(monkeypatch, config_for(tmp_path, "split"))
    resumed = run(config_for(tmp_path, "split", "trainer.resume=true"))
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    for name in ("last.safetensors", "best.safetensors"):
        a = (tmp_path / "whole" / "checkpoints" / name).read_bytes()
        b = (tmp_path / "split" / "checkpoints" / name).read_bytes()
        assert a == b, name
    assert resumed["test"] == whole["test"] and resumed["best_epoch"] == whole["best_epoch"]


def test_resume_with_another_config_names_the_key(tmp_path):
    run(config_for(tmp_path, "a"))
    with pytest.raises(G2DError, match="optim.lr"):
        run(config_for(tmp_path, "a", "trainer.resume=true", "optim.lr=0.2"))


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    config = config_for(tmp_path, "nan", "method.name=joint", "smp.enabled=false")
    from g2d.methods.joint import JointTrain

    original = JointTrain.loss
    calls = {"epoch": 0}

    def poisoned(self, output, batch, teachers):
        loss, terms = original(self, output, batch, teachers)
        return (loss * float("nan"), terms) if calls["epoch"] >= 1 else (loss, terms)

    def count_epoch(self, epoch):
        calls["epoch"] = epoch

    monkeypatch.setattr(JointTrain, "loss", poisoned)
    monkeypatch.setattr(JointTrain, "on_epoch_start", count_epoch)
    with pytest.raises(G2DError, match="epoch 1: training produced a non-finite value"):
        run(config)
    state = torch.load(tmp_path / "nan" / "checkpoints" / "last_state.pt", weights_only=True)
    assert state["state"]["epoch"] == 1
    assert not (tmp_path / "nan" / "metrics.json").exists()


@pytest.mark.parametrize("schedule", ["dynamic", "ranked"])
def test_training_step_makes_no_host_synchronization(tmp_path, monkeypatch, schedule):
    """Host reads do not grow with the number of steps: they happen per epoch, not per batch."""
    run(config_for(tmp_path, "warm"))  # teachers trained outside the count
    base = ["trainer.epochs=2", f"smp.schedule={schedule}", "smp.tau=[1]"]
    few = count_host_reads(monkeypatch, config_for(tmp_path, "few", *base, "trainer.batch_size=128"))
    many = count_host_reads(monkeypatch, config_for(tmp_path, "many", *base, "trainer.batch_size=16"))
    assert few == many


def test_teacher_fingerprint_sees_sequence_masks_and_samples_large_splits(monkeypatch):
    import g2d.training.teachers as teachers
    from g2d.data.base import ModalitySpec, MultimodalData, mask_key

    def dataset(rows, mask_row0):
        mask = torch.ones(rows, 3, dtype=torch.bool)
        mask[0, 2] = mask_row0
        split = {"seq": torch.zeros(rows, 3, 2), mask_key("seq"): mask, "label": torch.zeros(rows, dtype=torch.long)}
        return MultimodalData("toy", "classification", 2, {"seq": ModalitySpec("sequence", (3, 2))},
                              {"train": split, "val": split, "test": split})

    assert teachers.data_fingerprint(dataset(10, True), "seq") != teachers.data_fingerprint(dataset(10, False), "seq")
    monkeypatch.setattr(teachers, "FINGERPRINT_ROWS", 4)
    big = dataset(10, True)
    before = teachers.data_fingerprint(big, "seq")
    big.splits["train"]["seq"][1] += 1.0  # row 1 is not among the 4 evenly spaced rows 0, 3, 6, 9
    assert teachers.data_fingerprint(big, "seq") == before
    big.splits["train"]["seq"][3] += 1.0
    assert teachers.data_fingerprint(big, "seq") != before


def test_a_run_records_its_thread_count_and_trainer_threads_overrides_auto(tmp_path, monkeypatch):
    """auto takes the process's cores (or a sweep worker's share), one thread for a small model; an integer wins;
    a bad value is refused before anything is written."""
    from g2d.training import threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(threads, "available_cores", lambda: 3)
        small = run(config_for(tmp_path, "small", "method.name=joint", "smp.enabled=false", "trainer.epochs=1"))
        assert small["environment"]["threads"] == 1 and small["environment"]["thread_budget"] == 3
        monkeypatch.setattr(threads, "SMALL_STEP_FLOPS", 0)  # every model counts as large
        auto = run(config_for(tmp_path, "auto", "method.name=joint", "smp.enabled=false", "trainer.epochs=1"))
        assert auto["environment"]["threads"] == 3 and torch.get_num_threads() == 3
        monkeypatch.setattr(threads, "_budget", 2)  # what a sweep worker's set_budget leaves
        assert threads.choose_threads("auto") == 2
        one = run(config_for(tmp_path, "one", "method.name=joint", "smp.enabled=false", "trainer.epochs=1",
                             "trainer.threads=1"))
        assert one["environment"]["threads"] == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(threads, "SMALL_STEP_FLOPS", 1e30)  # an integer wins over the small-model rule
        two = run(config_for(tmp_path, "two", "method.name=joint", "smp.enabled=false", "trainer.epochs=1",
                             "trainer.threads=2"))
        assert two["environment"]["threads"] == 2
        for bad in ("0", "many", "-2"):
            with pytest.raises(G2DError, match="trainer.threads"):
                run(config_for(tmp_path, "bad", "trainer.threads=" + bad))
        assert not (tmp_path / "bad").exists()
    finally:
        torch.set_num_threads(before)


def test_forward_flops_counts_one_batch_and_leaves_the_model_and_generators_alone():
    """Linear(4, 3) costs 2 * 4 * 3 FLOPs a row: 24 * rows; the count runs in eval mode without touching
    the weights, the training flag or the random generators (the run's results must not depend on it)."""
    from g2d.data.base import ModalitySpec, MultimodalData
    from g2d.training.threads import forward_flops

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear, self.drop = torch.nn.Linear(4, 3), torch.nn.Dropout(0.5)

        def forward(self, batch):
            assert not self.training
            return self.drop(self.linear(batch["a"])) + 0 * torch.rand(1)  # a draw the count must not consume

    split = {"a": torch.randn(5, 4), "label": torch.arange(5) % 2}
    data = MultimodalData("t", "classification", 2, {"a": ModalitySpec("vector", (4,))},
                          {"train": split, "val": split, "test": split})
    net = Net().train()
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    state = torch.get_rng_state()
    assert forward_flops(net, data, 16) == 24 * 16
    assert net.training and torch.equal(torch.get_rng_state(), state)
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(v, weights[k]) for k, v in net.state_dict().items())


def test_forward_flops_hooks_count_what_torch_counts_and_other_layers_fall_back_to_torch():
    """Convolutions, linear layers and norms are counted by forward hooks, equal to torch's FlopCounterMode;
    a model with another parameterized layer (attention here) is counted by FlopCounterMode itself."""
    from torch.utils.flop_counter import FlopCounterMode

    from g2d.data.base import ModalitySpec, MultimodalData
    from g2d.training import threads

    class Conv(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8),
                                            torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, groups=2),
                                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))

        def forward(self, batch):
            return self.body(batch["img"])

    class Attention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = torch.nn.MultiheadAttention(4, 2, batch_first=True)

        def forward(self, batch):
            return self.attention(batch["seq"], batch["seq"], batch["seq"])[0]

    for net, key, shape in ((Conv(), "img", (3, 12, 12)), (Attention(), "seq", (6, 4))):
        split = {key: torch.randn(3, *shape), "label": torch.arange(3) % 2}
        if key == "seq":
            split["seq.mask"] = torch.ones(3, 6, dtype=torch.bool)
        kind = "image" if key == "img" else "sequence"
        data = MultimodalData("t", "classification", 2, {key: ModalitySpec(kind, shape)},
                              {"train": split, "val": split, "test": split})
        with FlopCounterMode(display=False) as counter:  # with gradients on: no fused attention kernel
            net.eval()(dict(split, **{key: split[key][:1]}))
        assert counter.get_total_flops() > 0
        assert threads.forward_flops(net, data, 7) == 7 * counter.get_total_flops()
