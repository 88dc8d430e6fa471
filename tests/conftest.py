"""Shared fixtures: a tiny mfeat experiment that trains in seconds."""

from pathlib import Path

import pytest
import torch
from torch import nn

import g2d.training.engine as engine
from g2d.runs.experiment import run

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "dataset.modalities=[pix,mor]",
    "model.encoder.hidden=[16]",
    "trainer.epochs=3",
    "trainer.batch_size=64",
    "trainer.progress=false",
    "optim.lr=0.05",
]


@pytest.fixture
def tiny_overrides(tmp_path: Path) -> list[str]:
    return [*TINY, f"out={tmp_path / 'run'}", f"teachers.root={tmp_path / 'teachers'}"]


def run_interrupted(monkeypatch, config, after_epochs: int = 2, data=None) -> None:
    """Run ``config`` (on ``data`` when given) and interrupt it, as a crash would, right after the
    checkpoint of epoch ``after_epochs``."""
    original = engine.save_checkpoint

    def crash_after(folder, model, optimizer, scheduler, state, cfg, method):
        original(folder, model, optimizer, scheduler, state, cfg, method)
        if state["epoch"] == after_epochs:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_checkpoint", crash_after)
    with pytest.raises(KeyboardInterrupt):
        run(config, data)
    monkeypatch.setattr(engine, "save_checkpoint", original)


def count_host_reads(monkeypatch, config):
    """Run ``config`` and count tensor-to-host conversions."""
    reads = {"n": 0}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    try:
        run(config)
    finally:
        monkeypatch.undo()
    return reads["n"]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """A G²D run (ranked SMP, tau 1) and a Joint-Train run sharing teachers, both analysed (g2d analyze)."""
    from g2d.config import load_config
    from g2d.results.analysis import analyze_run

    root = tmp_path_factory.mktemp("analysed")
    dirs = {}
    for name in ("g2d", "joint"):
        config = load_config(None, [*TINY, f"method.name={name}", "smp.tau=[1]", f"out={root / name}",
                                    f"teachers.root={root / 'teachers'}"])
        run(config)
        analyze_run(root / name)
        dirs[name] = root / name
    return dirs


def two_encoders() -> nn.ModuleDict:
    """Two small encoders, seeded: the SMP API tests' model."""
    torch.manual_seed(0)
    return nn.ModuleDict({"a": nn.Linear(3, 2), "b": nn.Linear(3, 2)})


def backward(encoders: nn.ModuleDict, step: int) -> None:
    """A backward pass through both encoders on a batch seeded by ``step``."""
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(step))
    (encoders["a"](x).pow(2).sum() + encoders["b"](x).sin().sum()).backward()
