"""``g2d.SMP`` and ``g2d.SMPCallback`` in training code we did not write (issue 30, item 3): any mapping of
encoders, phases that leave a modality no epoch refused, 0-dim tensors to ``rank``, the global batch under
torch.distributed, kappa once per optimizer step (own loop, Lightning with two optimizers and with gradient
accumulation), and one ``G2DError`` naming the argument for every wrong type or value (item 5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import g2d
from conftest import backward, two_encoders
from g2d.config import SMPConfig
from g2d.core.smp import Modulator
from g2d.errors import G2DError


def grads(encoders: nn.ModuleDict) -> dict[str, torch.Tensor | None]:
    return {name: None if p.grad is None else p.grad.clone() for name, p in encoders.named_parameters()}


# Item 3: SMP fits real training code.


def test_encoders_may_be_a_module_dict() -> None:
    from_dict, from_module_dict = two_encoders(), two_encoders()
    for encoders in (dict(from_dict), from_module_dict):
        smp = g2d.SMP(encoders=encoders, epochs=4, tau=[2])
        smp.rank({"a": 0.9, "b": 0.2})
        smp.start_epoch(0)
        backward(from_dict if isinstance(encoders, dict) else from_module_dict, 0)
        assert smp.apply() == {"a": 0.0, "b": 1.0}
    assert grads(from_dict).keys() == grads(from_module_dict).keys()
    for (name, one), other in zip(grads(from_dict).items(), grads(from_module_dict).values()):
        assert (one is None and other is None) or torch.equal(one, other), name


def test_the_same_encoder_under_two_names_is_refused() -> None:
    shared = nn.Linear(3, 2)
    with pytest.raises(G2DError, match=r"^SMP\(encoders=\.\.\.\): 'a' and 'b' share parameters"):
        g2d.SMP(encoders={"a": shared, "b": shared}, epochs=4)
    with pytest.raises(G2DError, match=r"^SMP\(encoders=\.\.\.\): 'a' and 'b' share parameters"):
        g2d.SMP(encoders={"a": nn.Sequential(shared, nn.ReLU()), "b": shared}, epochs=4)


def test_phases_that_leave_a_modality_no_epoch_are_refused() -> None:
    encoders = dict(two_encoders())
    with pytest.raises(G2DError, match=r"^SMP\(tau=\.\.\.\): phases \[4\] take 4 epochs and training has 4"):
        g2d.SMP(encoders=encoders, epochs=4, tau=[4])
    with pytest.raises(G2DError, match=r"^SMP\(tau=\.\.\.\): phases \[9\]"):
        g2d.SMP(encoders=encoders, epochs=4, tau=[9])
    with pytest.raises(G2DError, match=r"^config key smp\.tau: phases \[4\]"):
        Modulator(SMPConfig(tau=[4]), encoders, epochs=4)
    assert g2d.SMP(encoders=encoders, epochs=4, tau=[3]).tau == [3]
    # Every modality still trains where each batch is ranked anew, or under partial modulation.
    assert g2d.SMP(encoders=encoders, epochs=4, tau=[4], schedule="dynamic").tau == [4]
    assert g2d.SMP(encoders=encoders, epochs=4, tau=[4], modulator="partial").tau == [4]


def test_auto_tau_is_refused_naming_the_cli() -> None:
    with pytest.raises(G2DError, match=r"^SMP\(tau=\.\.\.\): 'auto' .* only the CLI computes \(g2d train with smp.tau=auto"):
        g2d.SMP(encoders=dict(two_encoders()), epochs=40, tau="auto")


def test_rank_takes_numbers_and_zero_dim_tensors() -> None:
    smp = g2d.SMP(encoders=dict(two_encoders()), epochs=4)
    assert smp.rank({"a": torch.tensor(0.9), "b": torch.tensor(0.2)}) == ["b", "a"]
    assert smp.rank({"a": np.float32(0.1), "b": 0.2}) == ["a", "b"]
    assert smp.rank({"a": 1, "b": torch.tensor(0.5, dtype=torch.float64)}) == ["b", "a"]


def test_a_second_apply_before_the_step_changes_nothing() -> None:
    encoders = two_encoders()
    smp = g2d.SMP(encoders=dict(encoders), epochs=4, tau=[2], modulator="partial", partial_alpha=0.3)
    smp.rank({"a": 0.9, "b": 0.3})
    smp.start_epoch(0)
    backward(encoders, 0)
    raw = grads(encoders)
    kappa = smp.apply()
    assert kappa["a"] == pytest.approx(1 - math.tanh(0.3 * 3.0)) and kappa["b"] == 1.0
    once = grads(encoders)
    assert torch.allclose(once["a.weight"], raw["a.weight"] * kappa["a"])
    assert smp.apply() == kappa
    for name, value in grads(encoders).items():
        assert torch.equal(value, once[name]), name


def test_two_optimizers_each_calling_apply_give_kappa_once() -> None:
    encoders = two_encoders()
    smp = g2d.SMP(encoders=dict(encoders), epochs=4, tau=[2], modulator="partial", partial_alpha=0.3)
    smp.rank({"a": 0.3, "b": 0.9})
    first, second = (torch.optim.SGD(encoders[m].parameters(), lr=1.0) for m in "ab")
    smp.start_epoch(0)
    for step in range(2):
        first.zero_grad(), second.zero_grad()
        backward(encoders, step)
        raw, before = grads(encoders)["b.weight"], encoders["b"].weight.detach().clone()
        kappa = smp.apply()["b"]
        first.step()
        smp.apply()  # what a second optimizer's hook does
        second.step()
        assert torch.allclose(encoders["b"].weight, before - kappa * raw)


def test_apply_after_another_backward_before_the_step_is_refused() -> None:
    """Gradient accumulation with apply() per micro-batch would compound kappa: refused, naming why."""
    encoders = two_encoders()
    optimizer = torch.optim.SGD(encoders.parameters(), lr=0.1)
    smp = g2d.SMP(encoders=dict(encoders), epochs=4, tau=[2], modulator="partial")
    smp.rank({"a": 0.9, "b": 0.3})
    smp.start_epoch(0)
    backward(encoders, 0)
    smp.apply()
    backward(encoders, 1)
    with pytest.raises(G2DError, match=r"^SMP\.apply\(\): the gradients of 'a'.* once per optimizer step"):
        smp.apply()
    optimizer.step()  # the step spends the gradients: the next ones are scaled again
    optimizer.zero_grad(set_to_none=False)
    backward(encoders, 2)
    raw = grads(encoders)["a.weight"]
    kappa = smp.apply()["a"]
    assert torch.allclose(grads(encoders)["a.weight"], kappa * raw)


def test_the_engine_path_is_unchanged_by_apply_bookkeeping() -> None:
    """The CLI's Modulator never calls apply, so it registers no optimizer hook."""
    modulator = Modulator(SMPConfig(tau=[1]), dict(two_encoders()), epochs=2)
    assert modulator.step_hook is None and modulator.holding == {}


# torch.distributed: every replica suppresses the same encoders.


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoders = two_encoders()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoders["a"](x).pow(2).sum() + self.encoders["b"](x).sin().sum()


def replica(rank: int, store: str, out: str) -> None:
    """One of two gloo processes: a DDP replica whose batch ranks the modalities the other way round from
    its peer's, while the global batch ranks ``a`` as the more confident."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    net = Net()
    encoders = net.encoders
    model = nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    smp = g2d.SMP(encoders=dict(encoders), epochs=2, tau=[1], schedule="dynamic")
    smp.start_epoch(0)
    confident = {0: (4.0, 0.0), 1: (1.0, 1.5)}[rank]  # true-class logit of a's and b's teachers
    targets = torch.zeros(4, dtype=torch.long)
    logits = {m: torch.stack([torch.tensor([c, 0.0])] * 4) for m, c in zip("ab", confident)}
    for step in range(4):
        optimizer.zero_grad()
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(10 * rank + step))
        model(x).backward()  # DDP averages the gradients of both replicas
        kappa = smp.apply(teacher_logits=logits, targets=targets)
        assert kappa == {"a": 0.0, "b": 1.0}, (rank, kappa)
        optimizer.step()
    torch.save(encoders.state_dict(), f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_dynamic_schedule_ranks_on_the_global_batch_under_torch_distributed(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(replica, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
    assert torch.equal(states[0]["a.weight"], two_encoders()["a"].weight.detach())  # a frozen throughout


# Lightning: two optimizers, and gradient accumulation.


def rows(count: int, confident: list[tuple[float, float]]) -> list[dict[str, torch.Tensor]]:
    """Synthetic rows with inputs and each teacher's logits (true class 0 at logit ``c``)."""
    generator = torch.Generator().manual_seed(1)
    return [{"x": torch.randn(3, generator=generator), "label": torch.tensor(0),
             "ta": torch.tensor([confident[i][0], 0.0]), "tb": torch.tensor([confident[i][1], 0.0])}
            for i in range(count)]


def loss_of(encoders: nn.ModuleDict, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return encoders["a"](batch["x"]).pow(2).sum() + encoders["b"](batch["x"]).sin().sum()


def trainer(pl, callback, **kwargs):
    return pl.Trainer(max_epochs=1, accelerator="cpu", callbacks=[callback], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)


def test_smp_callback_with_two_optimizers_gives_kappa_once() -> None:
    pl = pytest.importorskip("lightning.pytorch")
    data = rows(8, [(1.0, 1.0)] * 8)

    class TwoOptimizers(pl.LightningModule):
        def __init__(self, encoders: nn.ModuleDict) -> None:
            super().__init__()
            self.encoders = encoders
            self.automatic_optimization = False

        def training_step(self, batch: dict[str, torch.Tensor], index: int) -> None:
            first, second = self.optimizers()
            first.zero_grad(), second.zero_grad()
            self.manual_backward(loss_of(self.encoders, batch))
            first.step()
            second.step()

        def configure_optimizers(self) -> list[torch.optim.Optimizer]:
            return [torch.optim.SGD(self.encoders[m].parameters(), lr=0.5) for m in "ab"]

    def smp_for(encoders: nn.ModuleDict) -> g2d.SMP:
        smp = g2d.SMP(encoders=dict(encoders), epochs=2, tau=[1], modulator="partial", partial_alpha=0.3)
        smp.rank({"a": 0.3, "b": 0.9})  # b, the second optimizer's, is scaled by 1 - tanh(0.9)
        return smp

    lightning_encoders, loop_encoders = two_encoders(), two_encoders()
    trainer(pl, g2d.SMPCallback(smp_for(lightning_encoders))).fit(
        TwoOptimizers(lightning_encoders), torch.utils.data.DataLoader(data, batch_size=4))
    smp = smp_for(loop_encoders)
    optimizers = [torch.optim.SGD(loop_encoders[m].parameters(), lr=0.5) for m in "ab"]
    smp.start_epoch(0)
    for batch in torch.utils.data.DataLoader(data, batch_size=4):
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss_of(loop_encoders, batch).backward()
        smp.apply()
        for optimizer in optimizers:
            optimizer.step()
    for (key, value), other in zip(lightning_encoders.state_dict().items(), loop_encoders.state_dict().values()):
        assert torch.allclose(value, other, rtol=0, atol=1e-6), key


def test_smp_callback_with_gradient_accumulation_ranks_and_scales_the_whole_step() -> None:
    """Two micro-batches per step: the first says b is the weaker teacher by far, the second says a is,
    narrowly; over the step's rows b is the weaker, so a is suppressed (the last micro-batch alone would
    suppress b), and b's update is the one of both micro-batches' gradients."""
    pl = pytest.importorskip("lightning.pytorch")
    data = rows(8, [(4.0, 0.0)] * 4 + [(0.9, 1.0)] * 4)

    class Student(pl.LightningModule):
        def __init__(self, encoders: nn.ModuleDict) -> None:
            super().__init__()
            self.encoders = encoders

        def training_step(self, batch: dict[str, torch.Tensor], index: int) -> torch.Tensor:
            self.smp_batch = ({"a": batch["ta"], "b": batch["tb"]}, batch["label"])
            return loss_of(self.encoders, batch)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.5)

    encoders, reference = two_encoders(), two_encoders()
    smp = g2d.SMP(encoders=dict(encoders), epochs=2, tau=[1], schedule="dynamic")
    callback = g2d.SMPCallback(smp)
    trainer(pl, callback, accumulate_grad_batches=2).fit(Student(encoders), torch.utils.data.DataLoader(data,
                                                                                                       batch_size=4))
    assert callback.applied == {"a": 0.0, "b": 1.0}
    assert torch.equal(encoders["a"].weight, reference["a"].weight)
    for batch in torch.utils.data.DataLoader(data, batch_size=4):
        (loss_of(reference, batch) / 2).backward()  # Lightning divides each micro-batch's loss by 2
    with torch.no_grad():
        expected = reference["b"].weight - 0.5 * reference["b"].weight.grad
    assert torch.allclose(encoders["b"].weight, expected, rtol=0, atol=1e-6)


# Item 5: one G2DError naming the argument for each wrong type or value.


@pytest.mark.parametrize("kwargs, match", [
    ({"encoders": [nn.Linear(3, 2), nn.Linear(3, 2)]}, r"^SMP\(encoders=\.\.\.\): SMP needs a mapping .* got a list"),
    ({"encoders": {"a": nn.Linear(3, 2)}}, r"^SMP\(encoders=\.\.\.\): .* got 1 encoder"),
    ({"encoders": {"a": nn.Linear(3, 2), "b": "resnet"}}, r"^SMP\(encoders=\.\.\.\): the encoder of 'b' must be"),
    ({"encoders": {"a": nn.Linear(3, 2), 1: nn.Linear(3, 2)}}, r"^SMP\(encoders=\.\.\.\): keys must be modality names"),
    ({"epochs": "4"}, r"^SMP\(epochs=\.\.\.\): must be a positive number"),
    ({"epochs": 0}, r"^SMP\(epochs=\.\.\.\): must be a positive number"),
    ({"tau": 2}, r"^SMP\(tau=\.\.\.\): must be a list of epochs"),
    ({"tau": [-1]}, r"^SMP\(tau=\.\.\.\): epochs must be >= 0"),
    ({"tau": [1.5]}, r"^SMP\(tau=\.\.\.\): must be a list of epochs"),
    ({"schedule": None}, r"^SMP\(schedule=\.\.\.\): unknown value None"),
    ({"modulator": "soft"}, r"^SMP\(modulator=\.\.\.\): unknown value 'soft'"),
    ({"partial_alpha": -1.0}, r"^SMP\(partial_alpha=\.\.\.\): must be a finite number >= 0"),
    ({"partial_alpha": float("nan")}, r"^SMP\(partial_alpha=\.\.\.\): must be a finite number >= 0"),
    ({"partial_alpha": "1"}, r"^SMP\(partial_alpha=\.\.\.\): must be a finite number >= 0"),
    ({"task": "ranking"}, r"^SMP\(task=\.\.\.\): unknown value 'ranking'"),
])
def test_smp_refuses_a_wrong_argument_naming_it(kwargs: dict, match: str) -> None:
    arguments = {"encoders": dict(two_encoders()), "epochs": 4, **kwargs}
    with pytest.raises(G2DError, match=match):
        g2d.SMP(**arguments)


def dynamic_smp() -> g2d.SMP:
    smp = g2d.SMP(encoders=dict(two_encoders()), epochs=4, schedule="dynamic")
    smp.start_epoch(0)
    return smp


LOGITS = {"a": torch.zeros(4, 3), "b": torch.zeros(4, 3)}
TARGETS = torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize("call, match", [
    (lambda smp: smp.rank({"a": torch.tensor([0.5]), "b": 0.2}), r"^SMP\.rank\(confidences=\.\.\.\): the value for 'a'"),
    (lambda smp: smp.rank({"a": float("nan"), "b": 0.2}), r"^SMP\.rank\(confidences=\.\.\.\): the value for 'a'"),
    (lambda smp: smp.rank({"a": "0.5", "b": 0.2}), r"^SMP\.rank\(confidences=\.\.\.\): the value for 'a'"),
    (lambda smp: smp.rank([0.5, 0.2]), r"^SMP\.rank\(confidences=\.\.\.\): needs one number per modality"),
    (lambda smp: smp.start_epoch(1.0), r"^SMP\.start_epoch\(epoch=\.\.\.\)"),
    (lambda smp: smp.apply(), r"^SMP\.apply\(teacher_logits=\.\.\., targets=\.\.\.\): the dynamic schedule"),
    (lambda smp: smp.apply([LOGITS["a"]] * 2, TARGETS), r"^SMP\.apply\(teacher_logits=\.\.\.\): must be a dict"),
    (lambda smp: smp.apply({**LOGITS, "text": LOGITS["a"]}, TARGETS), r"'text' is not one of them"),
    (lambda smp: smp.apply({"a": LOGITS["a"]}, TARGETS), r"^SMP\.apply\(teacher_logits=\.\.\.\): .*no logits for 'b'"),
    (lambda smp: smp.apply({"a": LOGITS["a"], "b": torch.zeros(5, 3)}, TARGETS),
     r"^SMP\.apply\(teacher_logits=\.\.\.\): 'b' must be a \[B, C\] tensor with B = 4"),
    (lambda smp: smp.apply({"a": LOGITS["a"], "b": torch.zeros(4, 2)}, TARGETS), r"'b' must be .* the shape \(4, 3\)"),
    (lambda smp: smp.apply({"a": LOGITS["a"], "b": np.zeros((4, 3))}, TARGETS), r"'b' must be a \[B, C\] tensor"),
    (lambda smp: smp.apply(LOGITS, TARGETS.float()), r"^SMP\.apply\(targets=\.\.\.\): must be integer classes"),
    (lambda smp: smp.apply(LOGITS, torch.tensor([0, 1, 2, 3])), r"^SMP\.apply\(targets=\.\.\.\): .* in \[0, 3\)"),
    (lambda smp: smp.apply(LOGITS, [0, 1, 2, 0]), r"^SMP\.apply\(targets=\.\.\.\): must be a 1-D tensor"),
])
def test_smp_methods_refuse_a_wrong_argument_naming_it(call, match: str) -> None:
    with pytest.raises(G2DError, match=match):
        call(dynamic_smp())


def test_smp_callback_refuses_what_is_not_an_smp() -> None:
    pytest.importorskip("lightning.pytorch")
    with pytest.raises(G2DError, match=r"^SMPCallback\(smp=\.\.\.\): must be a g2d\.SMP, got dict"):
        g2d.SMPCallback({"a": 1})



# Item 5: load_config, load_dataset, run and train_teachers name the argument at fault.

CONFIG = "configs/mfeat.yaml"


def test_load_config_refuses_a_str_of_overrides_naming_the_argument() -> None:
    with pytest.raises(G2DError, match=r"^load_config\(overrides=\.\.\.\): must be a list of 'key=value' strings, "
                                       r"got the str 'a=b'; wrap it in a list: \['a=b'\]"):
        g2d.load_config(CONFIG, "a=b")


@pytest.mark.parametrize("path, overrides, match", [
    (3, None, r"^load_config\(path=\.\.\.\): must be a YAML file or a packaged config name \(str or Path\), got int"),
    (CONFIG, ["trainer.epochs=2", 5], r"^load_config\(overrides=\.\.\.\): must be a list of 'key=value' strings"),
    (CONFIG, {"trainer.epochs": 2}, r"^load_config\(overrides=\.\.\.\): must be a list"),
    (CONFIG, ["trainer.epochs"], r"^override 'trainer.epochs' is not of the form key=value"),
    ("configs/nope.yaml", None, r"^config file not found: configs/nope.yaml"),
])
def test_load_config_refuses_a_wrong_argument_naming_it(path, overrides, match: str) -> None:
    with pytest.raises(G2DError, match=match):
        g2d.load_config(path, overrides)


def test_load_dataset_refuses_what_is_not_a_dataset_section() -> None:
    config = g2d.load_config(CONFIG)
    with pytest.raises(G2DError, match=r"^load_dataset\(config=\.\.\.\): must be a DatasetConfig .* got "
                                       r"ExperimentConfig; pass its dataset section: load_dataset\(config\.dataset\)"):
        g2d.load_dataset(config)
    with pytest.raises(G2DError, match=r"^load_dataset\(config=\.\.\.\): must be a DatasetConfig .* got str"):
        g2d.load_dataset("mfeat")
    config.dataset.val_fraction = "a tenth"
    with pytest.raises(G2DError, match=r"^config key dataset\.val_fraction: Value 'a tenth'"):
        g2d.load_dataset(config.dataset)


def test_run_refuses_a_path_naming_the_call_to_make(tmp_path) -> None:
    with pytest.raises(G2DError, match=r"^run\(config=\.\.\.\): must be a config from g2d\.load_config\(path, "
                                       r"overrides\), got str; use g2d\.run\(g2d\.load_config\('configs/mfeat\.yaml'\)\)"):
        g2d.run(CONFIG)
    with pytest.raises(G2DError, match=r"^train_teachers\(config=\.\.\.\): must be a config .* got dict"):
        g2d.train_teachers({"dataset": {"name": "mfeat"}})
    config = g2d.load_config(CONFIG, [f"out={tmp_path / 'run'}"])
    with pytest.raises(G2DError, match=r"^run\(data=\.\.\.\): must be the MultimodalData of g2d\.load_dataset"):
        g2d.run(config, data={"train": {}})
    config.trainer.epochs = "many"
    with pytest.raises(G2DError, match=r"^config key trainer\.epochs: Value 'many'"):
        g2d.run(config)
    config.trainer.epochs = "0"  # set in code, converted as a YAML value would be, then range-checked
    with pytest.raises(G2DError, match=r"^config key trainer\.epochs: must be at least 1, got 0"):
        g2d.run(config)
    assert list(tmp_path.iterdir()) == []
