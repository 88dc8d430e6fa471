"""CREMA-D preparation on a tiny dataset in the real layout: FSDD wavs renamed as clips, PyAV-written .flv videos."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from media_fixtures import CORRUPT, GRAY_STEP, LFS, NO_AUDIO, ROOT, clip, write_cremad_raw

from g2d.cli import main
from g2d.config import load_config
from g2d.data import load_dataset
from g2d.data.audio import resample
from g2d.data.cremad import EMOTIONS, prepare_cremad
from g2d.errors import G2DError

pytest.importorskip("av")

SETTINGS = {"fps": 1.0, "frames": 2, "size": 32, "progress": False}
@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cremad_raw(tmp_path_factory.mktemp("cremad") / "CREMA-D")


@pytest.fixture(scope="module")
def prepared(raw: Path) -> tuple[Path, dict]:
    out = raw.parent / "prepared"
    return out, prepare_cremad(raw, out, **SETTINGS)


def expected_log_spectrogram(wav: Path, frames: list[int]) -> np.ndarray:
    """The reference pipeline written out with numpy: 22,050 Hz, tiled to 3 s, zero-padded centred Hann frames."""
    wave, rate = sf.read(str(wav), dtype="float32")
    wave = resample(wave, rate, 22050).astype(np.float64)
    wave = np.tile(wave, -(-66150 // len(wave)))[:66150]
    padded = np.pad(np.clip(wave, -1, 1), 256)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(512) / 512)
    columns = [np.log(1e-7 + np.abs(np.fft.rfft(padded[j * 353 : j * 353 + 512] * window))) for j in frames]
    return np.stack(columns, axis=1)


def test_prepared_arrays_have_the_reference_shapes_and_values(raw: Path, prepared: tuple[Path, dict]) -> None:
    out, meta = prepared
    assert meta == json.loads((out / "prepare.json").read_text())
    assert sum(meta["splits"].values()) == 18 and meta["splits"]["test"] == 6
    for split, count in meta["splits"].items():
        audio = np.load(out / split / "audio.npy", allow_pickle=False)
        video = np.load(out / split / "video.npy", allow_pickle=False)
        labels = np.load(out / split / "label.npy", allow_pickle=False)
        assert audio.dtype == np.float16 and audio.shape == (count, 1, 257, 188)
        assert video.dtype == np.uint8 and video.shape == (count, 2, 3, 32, 32)
        assert labels.dtype == np.int64 and labels.shape == (count,)
    test_labels = np.load(out / "test" / "label.npy")
    assert [EMOTIONS[label] for label in test_labels] == list(EMOTIONS)
    columns = [0, 1, 94, 187]
    expected = expected_log_spectrogram(raw / "AudioWAV" / f"{clip(1003, 'NEU')}.wav", columns)
    found = np.load(out / "test" / "audio.npy")[0, 0][:, columns].astype(np.float64)
    # FSDD is 8 kHz: in the inner frames the bins above 4 kHz hold only float32 rounding noise near
    # log(1e-7), so values are compared where the expected magnitude is above that noise.
    audible = expected > -9.0
    assert audible.sum() > 500
    np.testing.assert_allclose(found[audible], expected[audible], rtol=2e-3, atol=2e-2)
    assert (found[~audible] < -8.0).all()


def test_frames_are_sampled_at_fps_and_spread_evenly(prepared: tuple[Path, dict]) -> None:
    # At 1 fps a 2.5 s clip gives frames at 0, 1, 2 s (indices 0, 10, 20), of which positions 0 and 2 are
    # kept; a 1.5 s clip gives 0 and 1 s and keeps both. Frame i is gray level i * GRAY_STEP.
    out, _ = prepared
    video = np.load(out / "test" / "video.npy").astype(np.float64)
    means = video.mean(axis=(2, 3, 4))
    long_clip, short_clip = [0, 20 * GRAY_STEP % 256], [0, 10 * GRAY_STEP % 256]
    np.testing.assert_allclose(means, [long_clip, short_clip] * 3, atol=8)


def test_corrupt_and_missing_clips_are_skipped_and_counted(prepared: tuple[Path, dict]) -> None:
    out, meta = prepared
    assert meta["skipped"]["total"] == 3
    assert meta["skipped"]["by_reason"] == {"missing": 1, "unreadable": 2}
    with (out / "skipped.csv").open() as handle:
        rows = {row["item"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {CORRUPT, NO_AUDIO, LFS}
    assert "git-lfs pointer" in rows[LFS]["reason"]
    assert rows[NO_AUDIO]["split"] == "test" and rows[NO_AUDIO]["reason"].startswith("missing:")
    assert rows[CORRUPT]["reason"].startswith("unreadable:") and f"{CORRUPT}.flv" in rows[CORRUPT]["reason"]


def test_the_command_line_gives_identical_files_with_two_workers(raw: Path, prepared: tuple[Path, dict]) -> None:
    out, _ = prepared
    again = raw.parent / "again"
    options = ["--fps", "1", "--frames", "2", "--size", "32", "--workers", "2"]
    assert main(["prepare", "cremad", "--root", str(raw), "--out", str(again), *options]) == 0
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        assert (out / name).read_bytes() == (again / name).read_bytes(), name


def test_loader_memory_maps_and_checks_the_fixed_validation_split(prepared: tuple[Path, dict]) -> None:
    out, meta = prepared
    config = load_config(ROOT / "configs" / "paper" / "cremad" / "g2d.yaml", [f"dataset.root={out}"])
    data = load_dataset(config.dataset)
    assert data.num_classes == 6 and data.modalities["video"].kind == "video"
    assert {split: data.size(split) for split in ("train", "val", "test")} == meta["splits"]
    with pytest.raises(G2DError, match="dataset.val_fraction"):
        load_dataset(load_config(None, ["dataset.name=cremad", f"dataset.root={out}", "dataset.val_fraction=0.2"]).dataset)
    with pytest.raises(G2DError, match="dataset.options.fps"):
        load_dataset(load_config(None, ["dataset.name=cremad", f"dataset.root={out}", "dataset.options.fps=2"]).dataset)
    with pytest.raises(G2DError, match="holds dataset 'cremad'"):
        load_dataset(load_config(None, ["dataset.name=vggsound", f"dataset.root={out}"]).dataset)


def test_g2d_train_runs_the_paper_config_on_the_prepared_folder(prepared: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = prepared
    overrides = [
        f"dataset.root={out}", "trainer.epochs=2", "smp.tau=[1]", "trainer.batch_size=4", "model.encoder.width=4",
        "trainer.progress=false", f"out={tmp_path / 'run'}", f"teachers.root={tmp_path / 'teachers'}",
    ]
    assert main(["train", str(ROOT / "configs" / "paper" / "cremad" / "g2d.yaml"), *overrides]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"] == "cremad" and metrics["modalities"] == ["audio", "video"]
    assert 0.0 <= metrics["test"]["multimodal"]["accuracy"] <= 1.0
    assert set(metrics["teachers"]) == {"audio", "video"}


def test_bad_inputs_are_errors_naming_the_file(raw: Path, prepared: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = prepared
    with pytest.raises(G2DError, match="already holds a prepared dataset"):
        prepare_cremad(raw, out, **SETTINGS)
    with pytest.raises(G2DError, match="train.csv: CREMA-D split list not found"):
        prepare_cremad(raw, tmp_path / "x", split_dir=tmp_path, **SETTINGS)
    (tmp_path / "train.csv").write_text("1001_DFA_ANG_XX,ANG\n1001_DFA_HAP_XX,SAD\n")
    (tmp_path / "test.csv").write_text("1003_DFA_ANG_XX,ANG\n")
    with pytest.raises(G2DError, match=r"train.csv:2: emotion 'SAD' does not match"):
        prepare_cremad(raw, tmp_path / "x", split_dir=tmp_path, **SETTINGS)
    with pytest.raises(G2DError, match="VideoFlash"):
        prepare_cremad(tmp_path, tmp_path / "x", **SETTINGS)
    assert not (tmp_path / "x").exists()
