"""SMP: schedule, priority per batch, ties, partial coefficients, and what suppression does to weights."""

import math

import pytest
import torch
from torch import nn

from g2d.config import SMPConfig
from g2d.core.smp import (
    Modulator,
    partial_coefficients,
    phase_of,
    priority_mask,
    resolve_tau,
)
from g2d.errors import G2DError


def test_phases_for_two_and_three_modalities():
    assert [phase_of(e, [3]) for e in range(5)] == [0, 0, 0, 1, 1]
    assert [phase_of(e, [2, 1]) for e in range(5)] == [0, 0, 1, 2, 2]
    assert [phase_of(e, [0, 2]) for e in range(3)] == [1, 1, 2]


def test_default_tau_is_half_of_training_split_evenly():
    assert resolve_tau(None, 2, 300) == [150]
    assert resolve_tau(None, 3, 300) == [75, 75]
    with pytest.raises(G2DError, match="smp.tau"):
        resolve_tau([5], 3, 10)


def test_priority_mask_follows_rank_k2():
    confidence = torch.tensor([0.9, 0.4])
    assert priority_mask(confidence, 0).tolist() == [0.0, 1.0]  # weaker modality b alone
    assert priority_mask(confidence, 1).tolist() == [1.0, 1.0]  # then both


def test_priority_mask_follows_rank_k3():
    confidence = torch.tensor([0.5, 0.9, 0.2])  # ranks: c (weakest), a, b (strongest)
    assert priority_mask(confidence, 0).tolist() == [0.0, 0.0, 1.0]
    assert priority_mask(confidence, 1).tolist() == [1.0, 0.0, 0.0]
    assert priority_mask(confidence, 2).tolist() == [1.0, 1.0, 1.0]


def test_ties_share_their_ranks():
    confidence = torch.tensor([0.3, 0.3, 0.8])
    assert priority_mask(confidence, 0).tolist() == [1.0, 1.0, 0.0]
    assert priority_mask(confidence, 1).tolist() == [1.0, 1.0, 0.0]
    assert priority_mask(torch.tensor([0.5, 0.5]), 0).tolist() == [1.0, 1.0]


def test_partial_coefficients_are_ogm_style():
    coefficients = partial_coefficients(torch.tensor([0.8, 0.4]), alpha=0.5)
    assert coefficients.tolist() == pytest.approx([1 - math.tanh(0.5 * 2.0), 1.0])


class TwoEncoders(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2))
        self.b = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2))

    def forward(self, x):
        return self.a(x) + self.b(x)


def one_step(suppression, kappa, steps=2, optimizer_name="sgd", host_freeze=False, foreach=None):
    torch.manual_seed(0)
    model = TwoEncoders()
    encoders = {"a": list(model.a.parameters()), "b": list(model.b.parameters())}
    modulator = Modulator(SMPConfig(suppression=suppression, tau=[1]), encoders, epochs=2)
    modulator.host_freeze = host_freeze
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2, foreach=foreach)
    else:
        kind = torch.optim.Adam if optimizer_name == "adam" else torch.optim.AdamW
        optimizer = kind(model.parameters(), lr=0.1, weight_decay=1e-2, foreach=foreach)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for step in range(steps):
        x = torch.randn(4, 1, 4, 4)
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        coefficients = torch.tensor(kappa[step])
        modulator.scale_gradients(coefficients)
        modulator.optimizer_step(optimizer, coefficients)
    return model, optimizer, before


@pytest.mark.parametrize("host_freeze", [False, True])
@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_freeze_keeps_suppressed_encoder_bit_identical(optimizer_name, host_freeze):
    model, optimizer, before = one_step("freeze", [[0.0, 1.0], [0.0, 1.0]], optimizer_name=optimizer_name,
                                        host_freeze=host_freeze)
    for name, param in model.named_parameters():
        if name.startswith("a."):
            assert torch.equal(param, before[name]), name
            assert all(torch.count_nonzero(v) == 0 for v in optimizer.state[param].values() if v.dim() > 0)
        else:
            assert not torch.equal(param, before[name]), name


def test_freeze_then_release_equals_a_fresh_start_for_that_encoder():
    """After a frozen step the momentum buffer is empty, so the next step is a first step."""
    model, optimizer, before = one_step("freeze", [[0.0, 1.0], [1.0, 1.0]])
    buffer = optimizer.state[model.a[0].weight]["momentum_buffer"]
    grad = model.a[0].weight.grad
    expected = grad + 1e-2 * before["a.0.weight"]
    assert torch.allclose(buffer, expected)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("optimizer_name", ["sgd", "adam", "adamw"])
def test_freeze_on_the_host_gives_the_same_weights_as_selecting_them_back(optimizer_name, foreach):
    """The CPU fast path leaves frozen encoders out of the step (host_freeze); the graph-safe default
    copies and selects them back. Frozen, released, frozen again, the other way round: same bits."""
    kappa = [[0.0, 1.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 0.0]]
    selected, _, _ = one_step("freeze", kappa, steps=5, optimizer_name=optimizer_name, foreach=foreach)
    skipped, optimizer, _ = one_step("freeze", kappa, steps=5, optimizer_name=optimizer_name, host_freeze=True,
                                     foreach=foreach)
    for (name, a), b in zip(selected.named_parameters(), skipped.parameters()):
        assert torch.equal(a, b), name
        assert b.grad is not None  # the gradients set aside are put back


def test_zero_grad_still_lets_momentum_and_weight_decay_move_the_encoder():
    model, _, before = one_step("zero_grad", [[1.0, 1.0], [0.0, 1.0]])
    assert not torch.equal(model.a[0].weight, before["a.0.weight"])


def test_conv_grad_zeroes_only_convolution_weights():
    model, _, before = one_step("conv_grad", [[0.0, 1.0], [0.0, 1.0]], steps=1)
    # The conv weight's gradient is zeroed, so only weight decay moves it: w <- w - lr * wd * w.
    assert torch.allclose(model.a[0].weight, before["a.0.weight"] * (1 - 0.1 * 1e-2), rtol=0, atol=1e-7)
    assert not torch.equal(model.a[3].weight, before["a.3.weight"])  # linear layer still learns
    assert not torch.equal(model.a[1].weight, before["a.1.weight"])  # so does BatchNorm


def test_dynamic_schedule_suppresses_the_more_confident_modality_per_batch():
    model = TwoEncoders()
    encoders = {"a": list(model.a.parameters()), "b": list(model.b.parameters())}
    modulator = Modulator(SMPConfig(schedule="dynamic", tau=[3]), encoders, epochs=6)
    assert modulator.coefficients(0, torch.tensor([0.9, 0.2])).tolist() == [0.0, 1.0]
    assert modulator.coefficients(0, torch.tensor([0.1, 0.7])).tolist() == [1.0, 0.0]
    assert modulator.active(2) and not modulator.active(3)


def test_ranked_schedule_uses_training_set_ranking():
    model = TwoEncoders()
    encoders = {"a": list(model.a.parameters()), "b": list(model.b.parameters())}
    modulator = Modulator(SMPConfig(schedule="ranked", tau=[2]), encoders, epochs=4)
    modulator.set_dataset_confidence(torch.tensor([0.3, 0.8]))
    assert modulator.ranking() == ["a", "b"]
    assert modulator.coefficients(0, torch.tensor([0.9, 0.1])).tolist() == [1.0, 0.0]


def test_bad_settings_name_the_key():
    model = TwoEncoders()
    encoders = {"a": list(model.a.parameters()), "b": list(model.b.parameters())}
    with pytest.raises(G2DError, match="smp.suppression"):
        Modulator(SMPConfig(suppression="melt"), encoders, epochs=4)
    with pytest.raises(G2DError, match="smp.enabled"):
        Modulator(SMPConfig(), {"a": encoders["a"]}, epochs=4)


def test_conv_grad_on_an_encoder_without_conv_weights_is_an_error_naming_the_key():
    mlp, conv = nn.Linear(4, 4), nn.Conv2d(1, 2, 3)
    encoders = {"tab": list(mlp.parameters()), "img": list(conv.parameters())}
    with pytest.raises(G2DError, match="smp.suppression: .*'tab'"):
        Modulator(SMPConfig(suppression="conv_grad"), encoders, epochs=4)
    assert Modulator(SMPConfig(suppression="freeze"), encoders, epochs=4).targets[0]


def test_default_tau_leaves_the_last_modality_an_epoch_on_short_schedules() -> None:
    """Half of training split evenly, one epoch each at least, unless that would fill the run (then refused):
    four modalities over two epochs get no phase rather than a default the preflight refuses."""
    assert resolve_tau(None, 2, 60) == [30]
    assert resolve_tau(None, 3, 3) == [1, 1]
    assert resolve_tau(None, 2, 2) == [1]
    assert resolve_tau(None, 3, 2) == [0, 0]
    assert resolve_tau(None, 4, 3) == [0, 0, 0]
    assert resolve_tau(None, 2, 1) == [0]
