"""Tests for the avdigits builder, its audio helpers and the AV-MNIST loader."""

from __future__ import annotations

import csv
import gzip
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from g2d.data.audio import log_spectrogram, mix_at_snr, read_wav, resample
from g2d.data.avdigits import prepare_avdigits
from g2d.data.avmnist import load_avmnist
from g2d.data.base import MultimodalData
from g2d.errors import G2DError

DATA_ROOT = Path(os.environ.get("G2D_DATA_ROOT", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
FSDD = DATA_ROOT / "fsdd" / "recordings"
MNIST = DATA_ROOT / "mnist"
NOISE = DATA_ROOT / "esc10" / "audio"
HAVE_DATA = FSDD.is_dir() and NOISE.is_dir() and (MNIST / "mnist_5k.csv.gz").is_file()
needs_data = pytest.mark.skipif(
    not HAVE_DATA, reason=f"real FSDD/MNIST/ESC-10 files not found under {DATA_ROOT} (set G2D_DATA_ROOT)"
)
CAPS = {"max_train": 120, "max_test": 40}
OUTPUT_FILES = {
    "image/train_data.npy": (np.uint8, (120, 784)),
    "image/test_data.npy": (np.uint8, (40, 784)),
    "audio/train_data.npy": (np.uint8, (120, 112, 112)),
    "audio/test_data.npy": (np.uint8, (40, 112, 112)),
    "train_labels.npy": (np.int64, (120,)),
    "test_labels.npy": (np.int64, (40,)),
}


def _prepare_real(out: Path, seed: int) -> dict:
    return prepare_avdigits(FSDD, MNIST, NOISE, out, seed=seed, progress=False, **CAPS)


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    if not HAVE_DATA:
        pytest.skip(f"real FSDD/MNIST/ESC-10 files not found under {DATA_ROOT} (set G2D_DATA_ROOT)")
    base = tmp_path_factory.mktemp("avdigits")
    return {
        name: (base / name, _prepare_real(base / name, seed))
        for name, seed in (("first", 0), ("again", 0), ("other", 1))
    }


def _sources(out: Path) -> list[dict[str, str]]:
    with (out / "sources.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _mnist_labels() -> dict[str, np.ndarray]:
    with gzip.open(MNIST / "t10k-labels-idx1-ubyte.gz", "rb") as handle:
        t10k = np.frombuffer(handle.read(), dtype=np.uint8, offset=8)
    with gzip.open(MNIST / "mnist_5k.csv.gz", "rt") as handle:
        extra = np.loadtxt(handle, delimiter=",", dtype=np.int64)[:, -1]
    return {"t10k": t10k.astype(np.int64), "mnist_5k": extra}


@needs_data
def test_real_output_files_have_av_mnist_shapes_and_dtypes(real_runs: dict) -> None:
    out, summary = real_runs["first"]
    for name, (dtype, shape) in OUTPUT_FILES.items():
        array = np.load(out / name, allow_pickle=False)
        assert array.dtype == dtype, name
        assert array.shape == shape, name
    assert summary == json.loads((out / "prepare.json").read_text())
    assert summary["audio"]["n_fft"] == 222 and summary["audio"]["hop"] == 72
    assert summary["image"]["pca_components"] >= 1 and summary["image"]["pca_energy_kept"] >= 0.25
    assert summary["audio"]["range"]["low"] < summary["audio"]["range"]["high"]
    assert summary["counts"]["train"]["pairs"] == 120 and summary["counts"]["test"]["pairs"] == 40
    assert summary["files_skipped_count"] == 0
    assert summary["split_rule"]
    audio = np.load(out / "audio/train_data.npy")
    assert audio.std() > 10, "spectrograms should use a good part of the uint8 range"


@needs_data
def test_real_sources_keep_each_recording_and_image_on_one_side(real_runs: dict) -> None:
    out, _ = real_runs["first"]
    rows = _sources(out)
    assert len(rows) == 160
    mnist_labels = _mnist_labels()
    sides: dict[str, dict[str, set]] = {split: {"fsdd": set(), "image": set()} for split in ("train", "test")}
    for split in ("train", "test"):
        labels = np.load(out / f"{split}_labels.npy")
        split_rows = [row for row in rows if row["split"] == split]
        assert [int(row["row"]) for row in split_rows] == list(range(len(labels)))
        for row in split_rows:
            label = int(row["label"])
            digit, _, take = Path(row["fsdd_file"]).stem.split("_")
            assert label == labels[int(row["row"])] == int(digit)
            assert label == mnist_labels[row["mnist_source"]][int(row["mnist_index"])]
            assert (int(take) < 5) == (split == "test")
            assert (NOISE / row["noise_file"]).is_file()
            if split == "test":
                assert row["mnist_source"] == "t10k" and int(row["mnist_index"]) < 3000
            sides[split]["fsdd"].add(row["fsdd_file"])
            sides[split]["image"].add((row["mnist_source"], int(row["mnist_index"])))
        assert len(sides[split]["image"]) == len(split_rows), "each image is used once"
    assert not sides["train"]["fsdd"] & sides["test"]["fsdd"]
    assert not sides["train"]["image"] & sides["test"]["image"]


@needs_data
def test_real_same_seed_is_identical_and_other_seed_differs(real_runs: dict) -> None:
    first, again, other = (real_runs[name][0] for name in ("first", "again", "other"))
    for name in OUTPUT_FILES:
        assert np.array_equal(np.load(first / name), np.load(again / name)), name
    assert (first / "sources.csv").read_text() == (again / "sources.csv").read_text()
    assert not np.array_equal(np.load(first / "audio/train_data.npy"), np.load(other / "audio/train_data.npy"))
    assert not np.array_equal(np.load(first / "image/test_data.npy"), np.load(other / "image/test_data.npy"))


@needs_data
def test_real_load_avmnist_carves_val_from_train(real_runs: dict) -> None:
    out, _ = real_runs["first"]
    data = load_avmnist(out, val_fraction=0.2, split_seed=3, name="avdigits")
    assert isinstance(data, MultimodalData)
    assert data.name == "avdigits" and data.num_classes == 10 and data.class_names == [str(d) for d in range(10)]
    assert data.size("train") + data.size("val") == 120 and data.size("test") == 40
    assert data.size("val") == 20
    assert data.splits["train"]["audio"].shape[1:] == (1, 112, 112)
    assert data.splits["val"]["image"].shape[1:] == (1, 28, 28)
    assert data.splits["test"]["image"].dtype == torch.uint8
    assert data.splits["val"]["label"].dtype == torch.int64
    assert data.modalities["audio"].scale == pytest.approx(1 / 255)
    images = np.load(out / "image/train_data.npy").reshape(-1, 1, 28, 28)
    stacked = np.concatenate([data.splits["train"]["image"].numpy(), data.splits["val"]["image"].numpy()])
    assert sorted(map(bytes, stacked)) == sorted(map(bytes, images))
    assert np.array_equal(data.splits["test"]["label"].numpy(), np.load(out / "test_labels.npy"))
    assert "validation" in data.notes["split"]


def test_mix_at_snr_hand_checked() -> None:
    signal = np.array([1.0, -1.0, 1.0, -1.0])
    noise = np.array([2.0, 2.0, 2.0, 2.0, 9.0])
    assert np.allclose(mix_at_snr(signal, noise, 0.0), [2.0, 0.0, 2.0, 0.0])
    assert np.allclose(mix_at_snr(signal, noise, 20.0), signal + 0.05 * 2.0)
    rng = np.random.default_rng(0)
    speech, hum = rng.normal(size=4000), 3.0 * rng.normal(size=5000)
    for snr_db in (-20.0, 0.0, 7.5):
        added = mix_at_snr(speech, hum, snr_db).astype(np.float64) - speech
        measured = 10 * np.log10(np.mean(speech**2) / np.mean(added**2))
        assert abs(measured - snr_db) < 0.01


def test_log_spectrogram_shape_and_values() -> None:
    waves = torch.zeros(3, 8000)
    spec = log_spectrogram(waves, n_fft=222, hop=72)
    assert spec.shape == (3, 112, 112)
    assert torch.allclose(spec, torch.full_like(spec, float(np.log(1e-6))))
    tone = torch.sin(2 * torch.pi * 1000 * torch.arange(8000) / 8000).unsqueeze(0)
    peak = log_spectrogram(tone, n_fft=222, hop=72)[0, :, 56].argmax().item()
    assert abs(peak * 8000 / 222 - 1000) < 8000 / 222


def test_resample_matches_a_sampled_tone() -> None:
    t_in, t_out = np.arange(44100) / 44100, np.arange(8000) / 8000
    result = resample(np.sin(2 * np.pi * 440 * t_in), 44100, 8000)
    assert result.shape == (8000,) and result.dtype == np.float32
    assert np.max(np.abs(result - np.sin(2 * np.pi * 440 * t_out))) < 1e-3


def test_read_wav_mono_and_errors(tmp_path: Path) -> None:
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.stack([np.full(100, 0.5), np.full(100, -0.25)], axis=1), 8000, subtype="PCM_16")
    wave, rate = read_wav(stereo)
    assert rate == 8000 and wave.dtype == np.float32 and wave.shape == (100,)
    assert np.allclose(wave, 0.125, atol=1e-4)
    with pytest.raises(G2DError, match="missing.wav"):
        read_wav(tmp_path / "missing.wav")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(G2DError, match="corrupt.wav"):
        read_wav(corrupt)


def _write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _synthetic_sources(root: Path) -> tuple[Path, Path, Path]:
    """A tiny FSDD, MNIST and noise tree: 10 digits x 7 takes, 40 + 30 images, two 0.5 s noise clips."""
    rng = np.random.default_rng(0)
    fsdd, mnist, noise = root / "fsdd", root / "mnist", root / "noise" / "nested"
    for folder in (fsdd, mnist, noise):
        folder.mkdir(parents=True)
    for digit in range(10):
        for take in range(7):
            tone = 0.3 * np.sin(2 * np.pi * (300 + 50 * digit + 10 * take) * np.arange(2400) / 8000)
            sf.write(fsdd / f"{digit}_spk_{take}.wav", tone, 8000, subtype="PCM_16")
    sf.write(fsdd / "notes.wav", np.zeros(100), 8000)
    labels = np.arange(40) % 10
    _write_idx(mnist / "t10k-images-idx3-ubyte.gz", 2051, rng.integers(0, 256, size=(40, 28, 28)))
    _write_idx(mnist / "t10k-labels-idx1-ubyte.gz", 2049, labels)
    table = np.concatenate([rng.integers(0, 256, size=(30, 784)), (np.arange(30) % 10)[:, None]], axis=1)
    with gzip.open(mnist / "mnist_5k.csv.gz", "wt") as handle:
        np.savetxt(handle, table, fmt="%d", delimiter=",")
    for name in ("a.wav", "b.wav"):
        sf.write(noise / name, 0.1 * rng.normal(size=22050), 44100, subtype="PCM_16")
    return fsdd, mnist, root / "noise"


def test_prepare_synthetic_skips_corrupt_wavs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fsdd, mnist, noise = _synthetic_sources(tmp_path)
    (fsdd / "3_spk_6.wav").write_bytes(np.random.default_rng(1).bytes(700))
    (noise / "nested" / "c.wav").write_bytes(np.random.default_rng(2).bytes(700))
    out = tmp_path / "out"
    summary = prepare_avdigits(fsdd, mnist, noise, out, test_images=20, progress=False)
    skipped = {(entry["kind"], entry["file"]) for entry in summary["files_skipped"]}
    assert skipped == {("fsdd", "3_spk_6.wav"), ("noise", "nested/c.wav")}
    assert summary["files_skipped_count"] == 2
    assert "3_spk_6.wav" in capsys.readouterr().err
    rows = _sources(out)
    assert len(rows) == 70 and all(row["fsdd_file"] != "3_spk_6.wav" for row in rows)
    assert all(row["noise_file"] in ("nested/a.wav", "nested/b.wav") for row in rows)
    assert np.load(out / "audio/train_data.npy").shape == (50, 112, 112)
    assert np.load(out / "image/test_data.npy").shape == (20, 784)


def test_prepare_refuses_non_empty_out_and_overwrites_atomically(tmp_path: Path) -> None:
    fsdd, mnist, noise = _synthetic_sources(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    for overwrite in (False, True):  # --overwrite replaces an earlier prepared dataset, not any folder
        with pytest.raises(G2DError, match="did not write"):
            prepare_avdigits(fsdd, mnist, noise, out, test_images=20, progress=False, overwrite=overwrite)
    assert (out / "keep.txt").read_text() == "old"
    (out / "keep.txt").unlink()
    prepare_avdigits(fsdd, mnist, noise, out, test_images=20, progress=False)
    with pytest.raises(G2DError, match="overwrite"):
        prepare_avdigits(fsdd, mnist, noise, out, test_images=20, progress=False)
    first = (out / "audio" / "train_data.npy").read_bytes()
    prepare_avdigits(fsdd, mnist, noise, out, test_images=20, progress=False, overwrite=True, seed=1)
    assert (out / "prepare.json").is_file() and (out / "audio" / "train_data.npy").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fsdd", "mnist", "noise", "out"]


def test_prepare_errors_name_the_file_or_option(tmp_path: Path) -> None:
    fsdd, mnist, noise = _synthetic_sources(tmp_path)
    empty = tmp_path / "empty_noise"
    empty.mkdir()
    with pytest.raises(G2DError, match="empty_noise"):
        prepare_avdigits(fsdd, mnist, empty, tmp_path / "out", progress=False)
    with pytest.raises(G2DError, match="duration_s"):
        prepare_avdigits(fsdd, mnist, noise, tmp_path / "out", duration_s=0.9, progress=False)
    with pytest.raises(G2DError, match="missing_fsdd"):
        prepare_avdigits(tmp_path / "missing_fsdd", mnist, noise, tmp_path / "out", progress=False)
    (mnist / "mnist_5k.csv.gz").unlink()
    with pytest.raises(G2DError, match="mnist_5k.csv.gz"):
        prepare_avdigits(fsdd, mnist, noise, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def _write_layout(root: Path, train: int = 20, test: int = 10) -> None:
    rng = np.random.default_rng(0)
    (root / "image").mkdir(parents=True)
    (root / "audio").mkdir()
    for split, count in (("train", train), ("test", test)):
        np.save(root / "image" / f"{split}_data.npy", rng.integers(0, 256, size=(count, 784), dtype=np.uint8))
        np.save(root / "audio" / f"{split}_data.npy", rng.integers(0, 256, size=(count, 112, 112), dtype=np.uint8))
        np.save(root / f"{split}_labels.npy", np.arange(count, dtype=np.int64) % 10)


def test_load_avmnist_synthetic_and_errors(tmp_path: Path) -> None:
    root = tmp_path / "avmnist"
    _write_layout(root)
    data = load_avmnist(root, val_fraction=0.1, split_seed=0)
    assert (data.size("train"), data.size("val"), data.size("test")) == (10, 10, 10)
    assert data.splits["train"]["image"].dtype == torch.uint8
    np.save(root / "audio" / "train_data.npy", np.zeros((20, 112, 112), dtype=np.float32))
    with pytest.raises(G2DError, match="train_data.npy"):
        load_avmnist(root, val_fraction=0.1, split_seed=0)
    np.save(root / "audio" / "train_data.npy", np.zeros((20, 112, 100), dtype=np.uint8))
    with pytest.raises(G2DError, match="train_data.npy"):
        load_avmnist(root, val_fraction=0.1, split_seed=0)
    np.save(root / "audio" / "train_data.npy", np.zeros((20, 112, 112), dtype=np.uint8))
    (root / "audio" / "test_data.npy").unlink()
    with pytest.raises(G2DError, match="audio/test_data.npy"):
        load_avmnist(root, val_fraction=0.1, split_seed=0)
