"""Weights are checked, not trusted (issue 30, item 4): teacher folders and run checkpoints record the sha256 of
each weight file, and ``load_teacher``, the teachers a run loads and resume refuse a changed byte, naming the file.
Folders written before hashes were recorded load unchecked (docs/reliability.md)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, run_interrupted

import g2d
from g2d.cli import main
from g2d.config import load_config
from g2d.errors import G2DError
from g2d.runs.experiment import run

CONFIG = str(ROOT / "configs" / "mfeat.yaml")


def overwrite_after_header(path: Path, count: int = 2000) -> None:
    """Overwrite ``count`` bytes of a safetensors file's tensor data, its header left intact (so it still
    parses and loads)."""
    data = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", data[:8])[0]
    assert len(data) >= start + count
    data[start:start + count] = bytes([0xFF]) * count  # 0xFFFFFFFF floats are NaN
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("teachers")
    config = load_config(CONFIG, [*TINY, "trainer.epochs=1", f"out={root / 'run'}", f"teachers.root={root / 't'}"])
    g2d.train_teachers(config)
    return root / "t"


def copy_of(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / folder.name
    copy.mkdir()
    for name in ("teacher.json", "teacher.safetensors"):
        (copy / name).write_bytes((folder / name).read_bytes())
    return copy


def test_teacher_folders_record_the_weights_hash(teachers: Path) -> None:
    import hashlib

    folder = teachers / "teacher_pix"
    recorded = json.loads((folder / "teacher.json").read_text())["sha256"]
    assert recorded == {"teacher.safetensors": hashlib.sha256((folder / "teacher.safetensors").read_bytes()).hexdigest()}


def test_load_teacher_refuses_changed_weights_naming_the_file(teachers: Path, tmp_path: Path) -> None:
    folder = copy_of(teachers / "teacher_pix", tmp_path)
    g2d.load_teacher(folder)
    overwrite_after_header(folder / "teacher.safetensors")
    with pytest.raises(G2DError, match=rf"^{folder / 'teacher.safetensors'}: its sha256 .* is not the .* recorded"):
        g2d.load_teacher(folder)


def test_a_teacher_folder_without_a_recorded_hash_loads_unchecked(teachers: Path, tmp_path: Path) -> None:
    folder = copy_of(teachers / "teacher_pix", tmp_path)
    metadata = json.loads((folder / "teacher.json").read_text())
    del metadata["sha256"]
    (folder / "teacher.json").write_text(json.dumps(metadata))
    overwrite_after_header(folder / "teacher.safetensors")
    features, _ = g2d.load_teacher(folder)(torch.zeros(2, 240))
    assert torch.isnan(features).any()  # what a folder written before the hashes risks


def test_a_run_refuses_a_changed_teacher_with_exit_2_naming_the_file(teachers: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "t"
    root.mkdir()
    for modality in ("pix", "mor"):
        copy_of(teachers / f"teacher_{modality}", root)
    overwrite_after_header(root / "teacher_pix" / "teacher.safetensors")
    capsys.readouterr()
    code = main(["train", CONFIG, *TINY, "trainer.epochs=1", f"out={tmp_path / 'run'}", f"teachers.root={root}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert err.startswith(f"g2d: error: {root / 'teacher_pix' / 'teacher.safetensors'}: its sha256"), err


def test_resume_refuses_a_changed_checkpoint_naming_the_file(teachers: Path, tmp_path: Path, monkeypatch,
                                                             capsys) -> None:
    overrides = [*TINY, "method.name=joint", "smp.enabled=false", "trainer.epochs=2", f"out={tmp_path / 'run'}",
                 f"teachers.root={teachers}"]
    run_interrupted(monkeypatch, load_config(CONFIG, overrides), after_epochs=1)
    checkpoint = tmp_path / "run" / "checkpoints"
    assert set(json.loads((checkpoint / "sha256.json").read_text())) == {"last.safetensors", "best.safetensors",
                                                                         "last_state.pt"}
    overwrite_after_header(checkpoint / "last.safetensors")
    with pytest.raises(G2DError, match=rf"^{checkpoint / 'last.safetensors'}: its sha256"):
        run(load_config(CONFIG, [*overrides, "trainer.resume=true"]))
    capsys.readouterr()
    assert main(["train", CONFIG, *overrides, "trainer.resume=true"]) == 2
    assert f"{checkpoint / 'last.safetensors'}: its sha256" in capsys.readouterr().err


def test_a_checkpoint_without_recorded_hashes_resumes_unchecked(teachers: Path, tmp_path: Path, monkeypatch) -> None:
    overrides = [*TINY, "method.name=joint", "smp.enabled=false", "trainer.epochs=2", f"out={tmp_path / 'run'}",
                 f"teachers.root={teachers}"]
    run_interrupted(monkeypatch, load_config(CONFIG, overrides), after_epochs=1)
    (tmp_path / "run" / "checkpoints" / "sha256.json").unlink()
    assert run(load_config(CONFIG, [*overrides, "trainer.resume=true"]))["epochs"] == 2
