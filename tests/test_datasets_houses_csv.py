"""The houses loader (a small fake folder, and the real one when present), k-fold splits, and the csv format."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import ROOT
from PIL import Image

from g2d.cli import main
from g2d.config import DatasetConfig
from g2d.data import load_dataset
from g2d.data.base import kfold_partition, mask_key, split_indices, stratified_split
from g2d.data.mfeat import EMBEDDED, read_view
from g2d.errors import G2DError

DATA_ROOT = Path(os.environ.get("G2D_DATA_ROOT", ROOT.parent / "shared" / "data"))
HOUSES = DATA_ROOT / "houses"
FSDD = DATA_ROOT / "fsdd" / "recordings"
CONFIG = str(ROOT / "configs" / "mfeat.yaml")
COLORS = {"frontal": (255, 0, 0), "bedroom": (0, 255, 0), "kitchen": (0, 0, 255), "bathroom": (255, 255, 255)}
FAKE_TABLE = [  # bedrooms bathrooms area zipcode price
    (3, 2, 1500, 11111, 200000), (4, 3, 2500, 11111, 400000), (2, 1, 900, 11111, 100000),
    (5, 4, 4000, 22222, 900000), (3, 2, 1600, 22222, 300000), (4, 2, 2100, 33333, 350000),
    (2, 2, 1000, 11111, 150000), (3, 3, 1800, 22222, 500000), (6, 5, 5000, 44444, 1200000),
    (3, 1, 1200, 11111, 250000),
]


def fake_houses(folder: Path) -> Path:
    """Ten houses whose photos are plain colours per room, so the montage layout can be checked."""
    (folder / "images").mkdir(parents=True)
    (folder / "HousesInfo.txt").write_text("".join(" ".join(str(v) for v in row) + "\n" for row in FAKE_TABLE))
    for house in range(1, len(FAKE_TABLE) + 1):
        for room, colour in COLORS.items():
            Image.new("RGB", (40, 30), colour).save(folder / "images" / f"{house}_{room}.jpg", quality=95)
    return folder


def houses_config(root: Path, **settings) -> DatasetConfig:
    options = settings.pop("options", {})
    return DatasetConfig(name="houses", root=str(root), val_fraction=0.2, test_fraction=0.2,
                         options={"image_size": 8, **options}, **settings)


def test_houses_montage_tabular_and_target_scaling(tmp_path):
    data = load_dataset(houses_config(fake_houses(tmp_path / "houses"), options={"zip_min_count": 2}))
    assert data.task == "regression" and list(data.modalities) == ["image", "tabular"]
    assert [data.size(s) for s in ("train", "val", "test")] == [6, 2, 2]
    image = data.splits["train"]["image"][0].int()
    assert image.shape == (3, 8, 8)
    for (rows, cols), colour in zip([(slice(0, 4), slice(0, 4)), (slice(0, 4), slice(4, 8)),
                                     (slice(4, 8), slice(0, 4)), (slice(4, 8), slice(4, 8))], COLORS.values()):
        assert (image[:, rows, cols].float().mean(dim=(1, 2)) - torch.tensor(colour)).abs().max() < 3
    prices = np.array([row[4] for row in FAKE_TABLE], dtype=np.float64)
    train_prices = data.unscale_targets(data.splits["train"]["label"].double())
    assert data.splits["train"]["label"].min() == 0 and data.splits["train"]["label"].max() == 1
    assert data.target_offset == pytest.approx(train_prices.min().item())
    assert data.target_offset + data.target_span == pytest.approx(train_prices.max().item())
    assert sorted(np.round(np.concatenate([data.unscale_targets(data.splits[s]["label"].double()).numpy()
                                           for s in ("train", "val", "test")]))) == sorted(prices)
    tabular = data.splits["train"]["tabular"]
    zips = [name for name in data.notes["tabular_columns"].split(", ") if name.startswith("zip_")]
    assert tabular.shape[1] == 3 + len(zips) and zips[-1] == "zip_other"
    assert torch.allclose(tabular[:, :3].mean(dim=0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(tabular[:, :3].std(dim=0, unbiased=False), torch.ones(3), atol=1e-5)
    assert torch.equal(tabular[:, 3:].sum(dim=1), torch.ones(6))


def test_houses_separate_photos_and_dropped_zip(tmp_path):
    root = fake_houses(tmp_path / "houses")
    data = load_dataset(houses_config(root, options={"photos": "separate", "zipcode": "drop"}))
    assert list(data.modalities) == ["frontal", "bedroom", "kitchen", "bathroom", "tabular"]
    assert data.modalities["kitchen"].shape == (3, 8, 8) and data.modalities["tabular"].shape == (3,)
    assert data.splits["test"]["kitchen"][:, 2].float().mean() > 250


@pytest.mark.parametrize("damage, fragment", [
    (lambda root: (root / "images" / "3_kitchen.jpg").unlink(), "3_kitchen.jpg"),
    (lambda root: (root / "images" / "4_bedroom.jpg").write_bytes(b"not a jpeg"), "4_bedroom.jpg"),
    (lambda root: (root / "HousesInfo.txt").write_text("3 2 1500 11111 200000\n3 2 abc 1 2\n"), "line 2"),
    (lambda root: (root / "HousesInfo.txt").unlink(), "HousesInfo.txt"),
])
def test_houses_bad_files_are_named(tmp_path, damage, fragment):
    root = fake_houses(tmp_path / "houses")
    damage(root)
    with pytest.raises(G2DError, match=fragment):
        load_dataset(houses_config(root))


@pytest.mark.parametrize("settings, fragment", [
    ({"options": {"size": 8}}, "dataset.options.size"),
    ({"options": {"image_size": 7}}, "dataset.options.image_size"),
    ({"options": {"image_size": "big"}}, "dataset.options.image_size"),
    ({"options": {"photos": "collage"}}, "dataset.options.photos"),
    ({"folds": 1}, "dataset.folds"),
    ({"folds": 3, "fold": 3}, "dataset.fold"),
    ({"fold": 2}, "dataset.fold: 2 needs dataset.folds"),
])
def test_houses_bad_settings_name_the_key(tmp_path, settings, fragment):
    with pytest.raises(G2DError, match=fragment.replace(".", r"\.")):
        load_dataset(houses_config(fake_houses(tmp_path / "houses"), **settings))


def test_houses_without_root_says_which_key_to_set():
    with pytest.raises(G2DError, match=r"dataset\.root=\.\./shared/data/houses"):
        load_dataset(DatasetConfig(name="houses"))


def test_kfold_partition_is_disjoint_covering_and_stratified():
    labels = np.repeat(np.arange(4), [10, 7, 7, 6])
    folds = kfold_partition(len(labels), 3, seed=5, labels=labels)
    assert sorted(np.concatenate(folds).tolist()) == list(range(30))
    assert [len(f) for f in folds] == [10, 10, 10]
    for fold in folds:
        assert np.bincount(labels[fold], minlength=4).max() - np.bincount(labels[fold], minlength=4).min() <= 2
        assert abs(np.sum(labels[fold] == 0) - 10 / 3) < 1
    assert [f.tolist() for f in folds] == [f.tolist() for f in kfold_partition(30, 3, seed=5, labels=labels)]


def test_fixed_split_of_mfeat_is_unchanged_by_the_fold_machinery():
    labels = read_view(EMBEDDED, "mor")[1]
    index = split_indices(DatasetConfig(), len(labels), labels)
    rest, test = stratified_split(labels, 0.2, 0)
    train_pos, val_pos = stratified_split(labels[rest], 0.1 / 0.8, 1)
    assert np.array_equal(index["test"], test) and np.array_equal(index["train"], rest[train_pos])
    assert np.array_equal(index["val"], rest[val_pos])


def test_unstratified_splits_ignore_the_labels():
    labels = np.repeat(np.arange(5), [40, 40, 40, 40, 1])  # one row of class 4
    for folds, fold in ((0, 0), (4, 3)):
        config = DatasetConfig(stratify=False, folds=folds, fold=fold)
        index = split_indices(config, len(labels), labels)
        for split, rows in split_indices(DatasetConfig(folds=folds, fold=fold), len(labels)).items():
            assert np.array_equal(index[split], rows)  # as for unlabelled rows
    rest, test = stratified_split(labels, 0.2, 0)
    assert 160 in test and 160 not in split_indices(DatasetConfig(stratify=False), len(labels), labels)["test"]
    assert sorted(np.bincount(labels[split_indices(DatasetConfig(stratify=False), len(labels), labels)["test"]],
                              minlength=5)[:4].tolist()) != [8, 8, 8, 8]


@pytest.mark.skipif(not HOUSES.is_dir(), reason=f"real houses data not found at {HOUSES} (set G2D_DATA_ROOT)")
def test_real_houses_fold_shapes_scaling_and_partition():
    config = DatasetConfig(name="houses", root=str(HOUSES), folds=5, fold=2)
    data = load_dataset(config)
    assert sum(data.size(s) for s in ("train", "val", "test")) == 535
    assert data.modalities["image"].shape == (3, 64, 64) and data.splits["test"]["image"].dtype == torch.uint8
    train = data.splits["train"]["label"]
    assert (train.min().item(), train.max().item()) == (0.0, 1.0)
    prices = np.loadtxt(HOUSES / "HousesInfo.txt")[:, 4]
    folds = [split_indices(DatasetConfig(folds=5, fold=f), 535) for f in range(5)]
    for split in ("train", "val", "test"):
        unscaled = data.unscale_targets(data.splits[split]["label"].double()).numpy()
        assert np.allclose(unscaled, prices[folds[2][split]], rtol=1e-6)
    assert sorted(np.concatenate([f["test"] for f in folds]).tolist()) == list(range(535))
    for index in folds:
        assert sorted(np.concatenate(list(index.values())).tolist()) == list(range(535))
        assert len(index["test"]) == 107 and 50 <= len(index["val"]) <= 56


def synth_tone(path: Path, frequency: float, rate: int = 8000) -> None:
    t = np.arange(int(0.4 * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), rate)


def make_csv(folder: Path, rows: int = 24, sequence: bool = False) -> Path:
    """A classification CSV: image, audio, npy-vector and tabular modalities whose values follow the label."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    recordings = {digit: sorted(FSDD.glob(f"{digit}_jackson_*.wav"))[:rows] for digit in (0, 1)} if FSDD.is_dir() else {}
    header = ["photo", "voice", "emb", "tab:age", "tab:income", "label"] + (["seq"] if sequence else [])
    lines = [",".join(header)]
    for row in range(rows):
        digit = row % 2
        Image.new("RGB", (12, 10), (200 * digit, 50, 200 - 200 * digit)).save(folder / f"img{row}.png")
        if recordings:
            shutil.copy(recordings[digit][row // 2], folder / f"a{row}.wav")
        else:
            synth_tone(folder / f"a{row}.wav", 400 + 800 * digit)
        np.save(folder / f"e{row}.npy", (rng.normal(size=4) + 2 * digit).astype(np.float32))
        cells = [f"img{row}.png", f"a{row}.wav", f"e{row}.npy", f"{30 + 10 * digit + rng.normal():.3f}",
                 f"{1000 * (1 + digit) + 50 * rng.normal():.1f}", ["zero", "one"][digit]]
        if sequence:
            np.save(folder / f"s{row}.npy", rng.normal(size=(1 + row % 3, 2)).astype(np.float32))
            cells.append(f"s{row}.npy")
        lines.append(",".join(cells))
    (folder / "index.csv").write_text("\n".join(lines) + "\n")
    return folder / "index.csv"


CSV_OPTIONS = {"image_size": 16, "sample_rate": 8000, "audio_seconds": 0.5, "n_fft": 128, "hop": 64}


def test_csv_decodes_every_kind_with_training_statistics(tmp_path):
    index = make_csv(tmp_path / "data", sequence=True)
    data = load_dataset(DatasetConfig(name="csv", root=str(index), val_fraction=0.25, test_fraction=0.25,
                                      options=CSV_OPTIONS))
    assert data.task == "classification" and data.class_names == ["one", "zero"] and data.num_classes == 2
    kinds = {m: (spec.kind, spec.shape) for m, spec in data.modalities.items()}
    assert kinds == {"photo": ("image", (3, 16, 16)), "voice": ("image", (1, 65, 63)), "emb": ("vector", (4,)),
                     "tab": ("vector", (2,)), "seq": ("sequence", (3, 2))}
    train = data.splits["train"]
    assert [data.size(s) for s in ("train", "val", "test")] == [12, 6, 6]
    assert train["photo"].dtype == torch.uint8 and data.modalities["photo"].scale == pytest.approx(1 / 255)
    for modality in ("tab", "emb"):
        assert torch.allclose(train[modality].mean(dim=0), torch.zeros(train[modality].shape[1]), atol=1e-5)
    assert abs(train["voice"].mean().item()) < 1e-4 and abs(train["voice"].std(unbiased=False).item() - 1) < 1e-4
    mask = train[mask_key("seq")]
    assert mask.dtype == torch.bool and torch.all(train["seq"][~mask] == 0)
    real = train["seq"][mask]
    assert torch.allclose(real.mean(dim=0), torch.zeros(2), atol=1e-5)
    # "one" is class 0: its photos are red (R = 200).
    red = train["photo"][:, 0].float().mean(dim=(1, 2))
    assert torch.all((red > 100) == (train["label"] == 0))


def test_csv_trains_end_to_end_with_g2d_on_four_modalities(tmp_path, capsys):
    index = make_csv(tmp_path / "data")
    small = {**CSV_OPTIONS, "image_size": 8, "audio_seconds": 0.25, "n_fft": 64, "hop": 64}
    options = [f"dataset.options.{key}={value}" for key, value in small.items()]
    out = tmp_path / "run"
    assert main(["train", CONFIG, "dataset.name=csv", f"dataset.root={index}", "dataset.modalities=[]", *options,
                 "model.encoder.hidden=[8]", "model.encoder.width=4", "trainer.epochs=2", "trainer.batch_size=8",
                 "trainer.progress=false", f"out={out}", f"teachers.root={tmp_path / 'teachers'}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "csv" and metrics["modalities"] == ["photo", "voice", "emb", "tab"]
    assert set(metrics["teachers"]) == set(metrics["modalities"]) and len(metrics["smp"]["ranking"]) == 4
    assert 0 <= metrics["test"]["multimodal"]["accuracy"] <= 1
    assert "test accuracy" in capsys.readouterr().out


def test_csv_split_column_and_integer_labels(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    lines = ["tab:x,label,split"] + [f"{i},{[10, 2, 7][i % 3]},{['train', 'train', 'val', 'test'][i % 4]}"
                                     for i in range(12)]
    (folder / "index.csv").write_text("\n".join(lines) + "\n")
    data = load_dataset(DatasetConfig(name="csv", root=str(folder / "index.csv")))
    assert data.class_names == ["2", "7", "10"]
    assert data.size("train") == 6 and data.size("val") == 3 and data.size("test") == 3
    assert data.splits["val"]["label"].tolist() == [1, 2, 0]  # rows 2, 6, 10: labels 7, 10, 2


def test_csv_regression_targets_scale_with_training_rows(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    lines = ["tab:x,target"] + [f"{i},{100 + 10 * i}" for i in range(20)]
    (folder / "index.csv").write_text("\n".join(lines) + "\n")
    data = load_dataset(DatasetConfig(name="csv", root=str(folder / "index.csv")))
    train = data.splits["train"]
    assert data.task == "regression" and (train["label"].min().item(), train["label"].max().item()) == (0.0, 1.0)
    train_targets = data.unscale_targets(train["label"].double())
    assert data.target_offset == train_targets.min().item() == pytest.approx(min(train_targets.tolist()))
    every = torch.cat([data.unscale_targets(data.splits[s]["label"].double()) for s in ("train", "val", "test")])
    assert sorted(round(v, 3) for v in every.tolist()) == [100 + 10 * i for i in range(20)]


@pytest.mark.parametrize("edit, options, fragment", [
    (lambda f: (f / "img3.png").unlink(), {}, r"line 5, column 'photo'.*img3\.png"),
    (lambda f: (f / "a2.wav").write_bytes(b"RIFF"), {}, r"line 4, column 'voice'.*a2\.wav"),
    (lambda f: (f / "e1.npy").write_bytes(b"junk"), {}, r"line 3, column 'emb'.*e1\.npy"),
    (lambda f: replace(f, "img0.png", "img0.gif"), {}, r"line 2, column 'photo'.*\.gif"),
    (lambda f: replace(f, ",zero\n", ",\n", count=1), {}, r"line 2, column 'label'"),
    (lambda f: replace(f, "label", "target"), {}, r"column 'target'.*number"),
    (lambda f: replace(f, "emb,tab", "target,tab"), {}, "exactly one"),
    (lambda f: replace(f, "photo,", "a.b,"), {}, r"'a\.b'"),
    (lambda f: None, {"ignore_columns": ["nope"]}, "ignore_columns"),
    (lambda f: None, {"n_fft": 8000}, r"dataset\.options\.n_fft"),
    (lambda f: None, {"sample_rate": 0}, r"dataset\.options\.sample_rate"),
])
def test_csv_errors_name_line_column_file_or_key(tmp_path, edit, options, fragment):
    index = make_csv(tmp_path / "data", rows=6)
    edit(index.parent)
    with pytest.raises(G2DError, match=fragment):
        load_dataset(DatasetConfig(name="csv", root=str(index), val_fraction=0.34, test_fraction=0.34,
                                   options={**CSV_OPTIONS, **options}))


def replace(folder: Path, old: str, new: str, count: int = -1) -> None:
    path = folder / "index.csv"
    path.write_text(path.read_text().replace(old, new, count))


def test_csv_split_column_values_and_folds_are_checked(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "index.csv").write_text("tab:x,label,split\n1,a,train\n2,b,val\n3,a,dev\n")
    with pytest.raises(G2DError, match=r"line 4, column 'split'.*'dev'"):
        load_dataset(DatasetConfig(name="csv", root=str(folder / "index.csv")))
    (folder / "index.csv").write_text("tab:x,label,split\n1,a,train\n2,b,val\n3,a,test\n")
    with pytest.raises(G2DError, match=r"dataset\.folds"):
        load_dataset(DatasetConfig(name="csv", root=str(folder / "index.csv"), folds=2))


def test_csv_bad_index_paths_exit_cleanly_from_the_cli(tmp_path, capsys):
    assert main(["train", CONFIG, "dataset.name=csv", f"dataset.root={tmp_path / 'none.csv'}",
                 "dataset.modalities=[]"]) == 2
    err = capsys.readouterr().err
    assert "none.csv" in err and "Traceback" not in err
