"""Shared fixtures: a tiny mfeat experiment that trains in seconds."""

from pathlib import Path

import pytest

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
