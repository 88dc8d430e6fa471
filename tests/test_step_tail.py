"""The step's shared tail (``Method.update``, ``Method.report``, ``Method.finish_step``): a method that
computes its gradients its own way gets SMP, its learning-rate factors and the optimizer step by handing
over; and the one builder of the model with the method's modules (``g2d.methods.build.build_model``)."""

import pytest
import torch
from conftest import TINY, run_interrupted
from safetensors.torch import load_file

import g2d.training.engine as engine
from g2d.config import load_config
from g2d.core.smp import Modulator
from g2d.data import load_dataset
from g2d.methods import build_method
from g2d.methods.base import Method, MethodContext
from g2d.methods.build import build_model
from g2d.methods.joint import JointTrain
from g2d.models.multimodal import MultimodalModel
from g2d.runs.experiment import run, train_teachers
from g2d.training.engine import seed_everything
from g2d.training.teachers import output_size

LR, DECAY = 0.1, 0.01


class OwnGradients(Method):
    """A method whose gradients are all ones and whose ``mor`` encoder learns at half the rate."""

    name = "own"

    def learning_rate_factors(self) -> dict[str, float]:
        return {"encoder:mor": 0.5}


def test_update_applies_smp_freeze_and_the_learning_rate_factors_by_hand():
    config = load_config(None, [*TINY, "optim.momentum=0.0", f"optim.lr={LR}", f"optim.weight_decay={DECAY}"])
    data = load_dataset(config.dataset)
    modalities = list(data.modalities)
    method = OwnGradients(None, data.task, modalities)
    model = build_model(data.modalities, config.model, output_size(data), method)
    optimizer = engine.build_optimizer(model, config.optim)
    modulator = Modulator(config.smp, {m: model.encoder_parameters(m) for m in modalities}, config.trainer.epochs)
    method.setup(MethodContext(model=model, optimizer=optimizer, data=data, device=torch.device("cpu"),
                               config=config, modulator=modulator))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    smp = torch.tensor([0.0, 1.0])  # pix suppressed (freeze: not even weight decay moves it), mor allowed
    method.update(smp)
    for name, param in model.named_parameters():
        old = before[name]
        if name.startswith("encoders.pix."):
            assert torch.equal(param, old), name
        else:
            rate = LR * (0.5 if name.startswith("encoders.mor.") else 1.0)
            torch.testing.assert_close(param.detach(), old - rate * (1 + DECAY * old), atol=1e-7, rtol=0)
    batch = {"label": torch.tensor([0, 1, 1])}
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    reported = method.report(batch, torch.tensor(1.5), {"mine": torch.tensor(2.0)}, logits,
                             torch.tensor([0.5, 0.25]), smp)
    assert {k: round(v.item(), 6) for k, v in reported.items()} == {
        "loss": 1.5, "mine": 2.0, "accuracy": round(2 / 3, 6), "kappa/pix": 0.0, "kappa/mor": 0.25}


@pytest.mark.parametrize("name", ["mla", "mmpareto"])
def test_methods_owning_their_step_freeze_the_suppressed_encoder(tmp_path, monkeypatch, name):
    """Ranked SMP suppresses pix (the more confident teacher) for the 3 epochs of its phase (the run stopped
    there: phases as long as training are refused): under MLA's sub-steps and MMPareto's integrated
    gradients alike its encoder never moves, while mor's does."""
    config = load_config(None, [*TINY, f"out={tmp_path / name}", f"teachers.root={tmp_path / 'teachers'}",
                                f"method.name={name}", "smp.enabled=true", "smp.tau=[3]", "trainer.epochs=4",
                                "teachers.epochs=3"])
    train_teachers(config)  # before the student's run, which stops after its 3rd epoch
    run_interrupted(monkeypatch, config, after_epochs=3)
    data = load_dataset(config.dataset)
    seed_everything(config.seed)
    initial = MultimodalModel(data.modalities, config.model, output_size(data)).state_dict()
    final = load_file(str(tmp_path / name / "checkpoints" / "last.safetensors"))
    pix = [k for k in initial if k.startswith("encoders.pix.")]
    assert pix and all(torch.equal(final[k], initial[k]) for k in pix)
    assert not torch.equal(final["encoders.mor.net.0.weight"], initial["encoders.mor.net.0.weight"])
    history = torch.load(tmp_path / name / "checkpoints" / "last_state.pt", weights_only=True)["state"]["history"]
    assert [r["train"]["kappa/pix"] for r in history] == [0.0] * 3
    assert [r["train"]["kappa/mor"] for r in history] == [1.0] * 3


def test_build_model_adds_the_method_modules_after_the_model():
    """One builder: the same weights as building the model alone under the same seed, plus the method's modules."""
    config = load_config(None, [*TINY, "method.name=mla"])
    data = load_dataset(config.dataset)
    method = build_method(config.method, data.task, list(data.modalities))
    torch.manual_seed(0)
    built = build_model(data.modalities, config.model, output_size(data), method)
    torch.manual_seed(0)
    alone = MultimodalModel(data.modalities, config.model, output_size(data))
    assert built.method_modules is method.head is not None
    for key, value in alone.state_dict().items():
        assert torch.equal(built.state_dict()[key], value), key
    assert any(k.startswith("method_modules.") for k in built.state_dict())
    joint = JointTrain(None, data.task, list(data.modalities))
    assert build_model(data.modalities, config.model, output_size(data), joint).method_modules is None
