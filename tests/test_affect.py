"""UR-Funny / IEMOCAP preparation from MultiBench-style feature pickles written by the test."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from media_fixtures import ROOT

from g2d.cli import main
from g2d.config import load_config
from g2d.data import load_dataset
from g2d.data.affect import prepare_affect
from g2d.errors import G2DError
from g2d.models.encoders import ENCODER_NAMES

DIMS = {"text": 5, "audio": 3, "vision": 4}
STEPS = 6
MAX_LEN = 4


def split_arrays(count: int, seed: int, labels: np.ndarray) -> dict:
    """MultiBench's layout: word-aligned (N, T, d) features zero-padded at the front; row i has i % 5 pad steps."""
    rng = np.random.default_rng(seed)
    table = {m: np.zeros((count, STEPS, d), dtype=np.float32) for m, d in DIMS.items()}
    for row in range(count):
        for modality, array in table.items():
            array[row, row % 5 :] = rng.uniform(0.5, 1.5, size=(STEPS - row % 5, DIMS[modality]))
    table["labels"] = labels
    table["id"] = np.array([f"clip{seed}_{row}" for row in range(count)], dtype=object)
    return table


def humor_pickle(path: Path) -> dict:
    data = {
        "train": split_arrays(12, 0, (np.arange(12) % 2).reshape(12, 1).astype(np.float64)),
        "valid": split_arrays(4, 1, np.array([[0.0], [1.0], [0.0], [1.0]])),
        "test": split_arrays(4, 2, np.array([[1.0], [0.0], [1.0], [0.0]])),
    }
    data["train"]["text"][3] = 0.0
    data["train"]["audio"][1, 2, 0] = -np.inf
    path.write_bytes(pickle.dumps(data, protocol=4))
    return data


@pytest.fixture(scope="module")
def urfunny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    base = tmp_path_factory.mktemp("urfunny")
    data = humor_pickle(base / "humor.pkl")
    meta = prepare_affect("urfunny", base, base / "prepared", trust_pickle=True, max_len=MAX_LEN, progress=False)
    return base / "prepared", meta, data


def test_pickle_is_refused_without_trust(tmp_path: Path) -> None:
    humor_pickle(tmp_path / "humor.pkl")
    with pytest.raises(G2DError, match="--trust-pickle"):
        prepare_affect("urfunny", tmp_path / "humor.pkl", tmp_path / "out", progress=False)
    assert main(["prepare", "urfunny", "--root", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_trusted_pickle_may_still_hold_only_numpy_arrays(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    (tmp_path / "humor.pkl").write_bytes(pickle.dumps({"train": RunsCode(marker)}))
    with pytest.raises(G2DError, match="asks for .*system"):
        prepare_affect("urfunny", tmp_path, tmp_path / "out", trust_pickle=True, progress=False)
    assert not marker.exists()


def test_sequences_are_cut_left_aligned_and_masked(urfunny: tuple[Path, dict, dict]) -> None:
    out, meta, data = urfunny
    assert meta["splits"] == {"train": 11, "val": 4, "test": 4}
    assert meta["skipped"]["by_reason"] == {"empty": 1}
    assert meta["nonfinite_values_zeroed"] == {"text": 0, "audio": 1, "vision": 0}
    kept = [row for row in range(12) if row != 3]
    text = np.load(out / "train" / "text.npy", allow_pickle=False)
    mask = np.load(out / "train" / "text.mask.npy", allow_pickle=False)
    assert text.shape == (11, MAX_LEN, 5) and mask.dtype == bool
    for slot, row in enumerate(kept):
        real = min(STEPS - row % 5, MAX_LEN)
        assert mask[slot].tolist() == [True] * real + [False] * (MAX_LEN - real)
        np.testing.assert_array_equal(text[slot, :real], data["train"]["text"][row, row % 5 :][:real])
        assert not text[slot, real:].any()
    audio = np.load(out / "train" / "audio.npy")
    assert audio[1, 1, 0] == 0.0  # the -inf at step 2 of row 1 (one pad step) is step 1 after the cut
    assert np.load(out / "train" / "label.npy").tolist() == [row % 2 for row in kept]


def test_loader_gives_sequence_modalities_with_masks(urfunny: tuple[Path, dict, dict]) -> None:
    out, _, _ = urfunny
    data = load_dataset(load_config(None, ["dataset.name=urfunny", f"dataset.root={out}"]).dataset)
    assert {m: (s.kind, s.shape) for m, s in data.modalities.items()} == {
        "text": ("sequence", (MAX_LEN, 5)), "audio": ("sequence", (MAX_LEN, 3)), "vision": ("sequence", (MAX_LEN, 4)),
    }
    assert data.splits["test"]["vision.mask"].dtype == torch.bool
    assert data.class_names == ["not humorous", "humorous"]


def test_iemocap_one_hot_pairs_become_four_classes(tmp_path: Path) -> None:
    pairs = np.zeros((6, 4, 2))
    pairs[:, :, 0] = 1
    for row, emotion in enumerate([0, 1, 2, 3, 1, 2]):
        pairs[row, emotion] = [0, 1]
    pairs[5, 0] = [0, 1]  # two emotions active: not a 4-class label
    data = {split: split_arrays(6, seed, pairs) for seed, split in enumerate(("train", "valid", "test"))}
    (tmp_path / "iemocap_data.pkl").write_bytes(pickle.dumps(data, protocol=2))
    meta = prepare_affect("iemocap", tmp_path, tmp_path / "out", trust_pickle=True, progress=False)
    assert meta["skipped"]["by_reason"] == {"no label": 3}
    assert np.load(tmp_path / "out" / "test" / "label.npy").tolist() == [0, 1, 2, 3, 1]
    assert meta["modalities"]["text"]["shape"] == [STEPS, 5]


@pytest.mark.skipif("transformer" not in ENCODER_NAMES, reason="the transformer encoder is not on this branch yet")
def test_g2d_train_runs_the_paper_config_on_urfunny(urfunny: tuple[Path, dict, dict], tmp_path: Path) -> None:
    out, _, _ = urfunny
    overrides = [
        f"dataset.root={out}", "trainer.epochs=1", "smp.tau=[0,0]", "trainer.batch_size=4", "trainer.progress=false",
        "model.encoder.d_model=16", "model.encoder.layers=1", "model.encoder.heads=2", "model.encoder.feedforward=32",
        f"out={tmp_path / 'run'}", f"teachers.root={tmp_path / 'teachers'}",
    ]
    assert main(["train", str(ROOT / "configs" / "paper" / "urfunny" / "g2d.yaml"), *overrides]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["modalities"] == ["text", "audio", "vision"]
    assert set(metrics["teachers"]) == {"text", "audio", "vision"}
