"""The public API (issue 22): G2DLoss and confidence by hand, SMP's freeze under real optimizers and its
equality with the CLI's step, errors that name arguments, lazy imports, and both examples end to end."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import g2d
from conftest import backward, two_encoders
from g2d.cli import main as cli_main
from g2d.config import SMPConfig
from g2d.core.smp import Modulator
from g2d.errors import G2DError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def test_g2d_loss_is_eq_1_to_4_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 1])
    features = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
    teacher_features = {"a": torch.tensor([[1.0, 0.0], [3.0, 0.0]])}
    teacher_logits = {"a": torch.zeros(2, 2)}  # uniform teacher
    total, terms = g2d.G2DLoss(alpha=2.0, beta=3.0)(logits=logits, targets=targets, features=features,
                                                     teacher_logits=teacher_logits, teacher_features=teacher_features)
    p_row1 = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    p_row2 = [1 / (1 + math.e), math.e / (1 + math.e)]
    task = (-math.log(p_row1[0]) - math.log(p_row2[1])) / 2
    feature = (0 + 4 + 0 + 16) / 4  # mean over batch and feature dimensions
    logit = sum(0.5 * (math.log(0.5) - math.log(p)) for p in p_row1 + p_row2) / 2  # KL, batch mean
    assert terms["task"].item() == pytest.approx(task, rel=1e-6)
    assert terms["feature"].item() == pytest.approx(feature, rel=1e-6)
    assert terms["logit"].item() == pytest.approx(logit, rel=1e-6)
    assert total.item() == pytest.approx(task + 2 * feature + 3 * logit, rel=1e-6)


def test_confidence_is_eq_5_by_hand() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    assert g2d.confidence(logits, torch.tensor([1, 0])).item() == pytest.approx((0.75 + 0.5) / 2)


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    "adam": lambda p: torch.optim.Adam(p, lr=0.1, weight_decay=0.1),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.1),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_suppressed_encoder_does_not_move_under_any_optimizer(name: str) -> None:
    encoders = two_encoders()
    optimizer = OPTIMIZERS[name](encoders.parameters())
    smp = g2d.SMP(encoders=dict(encoders), epochs=4, tau=[2])
    assert smp.rank({"a": 0.2, "b": 0.9}) == ["a", "b"]
    smp.start_epoch(3)  # joint phase first, so momentum and Adam's moments exist for both encoders
    backward(encoders, 0)
    assert smp.apply() == {"a": 1.0, "b": 1.0}
    optimizer.step()
    smp.start_epoch(0)  # the weak modality a alone
    before = copy.deepcopy(encoders["b"].state_dict())
    state = copy.deepcopy({i: optimizer.state[p] for i, p in enumerate(encoders["b"].parameters())})
    moving = encoders["a"].weight.detach().clone()
    for step in range(1, 4):
        optimizer.zero_grad()
        backward(encoders, step)
        assert smp.apply() == {"a": 1.0, "b": 0.0}
        optimizer.step()
    for key, value in encoders["b"].state_dict().items():
        assert torch.equal(value, before[key])
    for index, param in enumerate(encoders["b"].parameters()):
        for key, value in optimizer.state[param].items():
            assert torch.equal(value, state[index][key]), key
    assert not torch.equal(encoders["a"].weight, moving)


def test_apply_equals_the_cli_step() -> None:
    """The API path (gradients set to None) and the engine's (step, then restore) give the same weights."""
    cli, api = two_encoders(), two_encoders()
    cli_optimizer, api_optimizer = OPTIMIZERS["sgd"](cli.parameters()), OPTIMIZERS["sgd"](api.parameters())
    modulator = Modulator(SMPConfig(tau=[1]), {m: list(e.parameters()) for m, e in cli.items()}, epochs=2)
    modulator.set_dataset_confidence(torch.tensor([0.9, 0.2]))
    smp = g2d.SMP(encoders=dict(api), epochs=2, tau=[1])
    smp.rank({"a": 0.9, "b": 0.2})
    for epoch in range(2):
        smp.start_epoch(epoch)
        for step in range(3):
            cli_optimizer.zero_grad()
            backward(cli, step)
            kappa = modulator.coefficients(epoch, torch.zeros(2)) if modulator.active(epoch) else None
            if kappa is not None:
                modulator.scale_gradients(kappa)
                modulator.optimizer_step(cli_optimizer, kappa)
            else:
                cli_optimizer.step()
            api_optimizer.zero_grad()
            backward(api, step)
            smp.apply()
            api_optimizer.step()
    for (key, value), other in zip(cli.state_dict().items(), api.state_dict().values()):
        assert torch.equal(value, other), key


def test_errors_name_the_argument_and_the_cli_names_the_config_key() -> None:
    encoders = dict(two_encoders())
    with pytest.raises(G2DError, match=r"^SMP\(tau=\.\.\.\): needs 1 entries"):
        g2d.SMP(encoders=encoders, epochs=4, tau=[1, 2])
    with pytest.raises(G2DError, match=r"^SMP\(suppression=\.\.\.\): unknown value 'melt'"):
        g2d.SMP(encoders=encoders, epochs=4, suppression="melt")
    with pytest.raises(G2DError, match=r"^SMP\(encoders=\.\.\.\)"):
        g2d.SMP(encoders={"a": encoders["a"]}, epochs=4)
    with pytest.raises(G2DError, match=r"^config key smp\.tau: needs 1 entries"):
        Modulator(SMPConfig(tau=[1, 2]), encoders, epochs=4)
    smp = g2d.SMP(encoders=encoders, epochs=4)
    with pytest.raises(G2DError, match=r"start_epoch"):
        smp.apply()
    smp.start_epoch(0)
    with pytest.raises(G2DError, match=r"^SMP\.rank\(confidences=\.\.\.\)"):
        smp.apply()
    with pytest.raises(G2DError, match=r"^SMP\.rank\(confidences=\.\.\.\): needs one number per modality"):
        smp.rank({"a": 0.5})
    with pytest.raises(G2DError, match=r"^G2DLoss\(task=\.\.\.\)"):
        g2d.G2DLoss(task="ranking")


def test_import_is_lazy_and_typed() -> None:
    code = ("import sys, g2d, g2d.errors; assert 'torch' not in sys.modules, 'import g2d loaded torch'; "
            "assert all(hasattr(g2d, n) for n in g2d.__all__ if n != 'SMPCallback'); print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "ok", done.stderr
    assert (Path(g2d.__file__).parent / "py.typed").is_file()
    with pytest.raises(AttributeError, match="no attribute 'Modulator'"):
        g2d.Modulator  # noqa: B018


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_example(name: str, method: str, epochs: int, out: Path) -> dict:
    done = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--method", method, "--epochs", str(epochs),
                           "--seed", "0", "--out", str(out)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(line) == {"method", "multimodal", "pix", "mor"}
    return line


EPOCHS = 4  # G²D's weak view is clearly above Joint-Train's already (0.46 against 0.35 on seed 0)


def test_own_loop_equals_the_cli_and_lifts_the_weak_view(tmp_path: Path) -> None:
    own_loop = load_example("own_loop")
    g2d_result = own_loop.train("g2d", EPOCHS, 0, tmp_path)
    joint = run_example("own_loop", "joint", EPOCHS, tmp_path)
    assert g2d_result["mor"] > joint["mor"]
    assert cli_main(["train", str(ROOT / "configs" / "mfeat.yaml"), "--reference", f"trainer.epochs={EPOCHS}", f"out={tmp_path / 'cli'}",
                     "trainer.progress=false"]) == 0
    history = json.loads((tmp_path / "cli" / "history.json").read_text())
    cli_losses = [epoch["train"]["loss"] for epoch in history]
    assert g2d_result["train_loss"] == pytest.approx(cli_losses, rel=1e-5)
    teacher = g2d.load_teacher(tmp_path / "teachers" / "mfeat_seed0" / "teacher_mor")
    features, logits = teacher(torch.zeros(5, 6))
    assert features.shape == (5, 128) and logits.shape == (5, 10)
    assert not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(G2DError, match=r"^load_teacher\(folder=\.\.\.\): no teacher in"):
        g2d.load_teacher(tmp_path)


def test_lightning_example_lifts_the_weak_view(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    joint = load_example("lightning_module").train("joint", EPOCHS, 0, tmp_path)
    with_g2d = run_example("lightning_module", "g2d", EPOCHS, tmp_path)
    assert with_g2d["mor"] > joint["mor"]


def test_smp_callback_freezes_the_suppressed_encoder_in_a_trainer() -> None:
    pl = pytest.importorskip("lightning.pytorch")
    encoders = two_encoders()

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.encoders = encoders

        def training_step(self, batch: list[torch.Tensor], index: int) -> torch.Tensor:
            return self.encoders["a"](batch[0]).pow(2).sum() + self.encoders["b"](batch[0]).sin().sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=0.1, weight_decay=0.1)

    smp = g2d.SMP(encoders=dict(encoders), epochs=2, tau=[1])
    smp.rank({"a": 0.9, "b": 0.2})
    callback = g2d.SMPCallback(smp)
    frozen, moving = copy.deepcopy(encoders["a"].state_dict()), encoders["b"].weight.detach().clone()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 3)), batch_size=4)
    pl.Trainer(max_epochs=1, accelerator="cpu", callbacks=[callback], logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).fit(Module(), data)
    assert callback.applied == {"a": 0.0, "b": 1.0}
    assert all(torch.equal(value, frozen[key]) for key, value in encoders["a"].state_dict().items())
    assert not torch.equal(encoders["b"].weight, moving)
