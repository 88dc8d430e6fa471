"""VGGSound preparation on a tiny CSV and PyAV-written .mp4 clips in the release's naming."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from media_fixtures import GRAY_STEP, write_video

from g2d.cli import main
from g2d.config import load_config
from g2d.data import load_dataset
from g2d.data.vggsound import prepare_vggsound, read_vggsound_csv
from g2d.errors import G2DError

pytest.importorskip("av")

TONES = {"dog barking": 500.0, "male speech, man speaking": 1000.0, "waterfall burbling": 2000.0}
SETTINGS = {"frames": 3, "size": 16, "progress": False}


def tone(frequency: float, seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * frequency * np.arange(int(seconds * rate)) / rate)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Per class two train clips and one test clip, in train/ and test/ folders; one row has no clip, one clip is corrupt."""
    root = tmp_path_factory.mktemp("vggsound") / "clips"
    rows = []
    for number, (label, frequency) in enumerate(TONES.items()):
        for take, split in enumerate(("train", "train", "test")):
            youtube_id, start = f"-id{number}{take}_x", 10 * take + number
            rows.append((youtube_id, start, label, split))
            (root / split).mkdir(parents=True, exist_ok=True)
            write_video(root / split / f"{youtube_id}_{start:06d}.mp4", 3.0, codec="mpeg4", audio=tone(frequency))
    rows.append(("gone_video1", 30, "dog barking", "train"))
    rows.append(("corrupt0001", 40, "waterfall burbling", "train"))
    (root / "train" / "corrupt0001_000040.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really" * 10)
    with (root / "vggsound.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return root


@pytest.fixture(scope="module")
def prepared(raw: Path) -> tuple[Path, dict]:
    out = raw.parent / "prepared"
    return out, prepare_vggsound(raw, out, **SETTINGS)


def test_prepared_arrays_and_classes(prepared: tuple[Path, dict]) -> None:
    out, meta = prepared
    assert meta["class_names"] == sorted(TONES)
    # 7 train rows have a clip (one corrupt); a stratified tenth (one per class) is validation.
    assert meta["splits"]["train"] + meta["splits"]["val"] == 6 and meta["splits"]["test"] == 3
    assert meta["skipped"]["by_reason"] == {"missing": 1, "unreadable": 1}
    for split, count in meta["splits"].items():
        assert np.load(out / split / "audio.npy").shape == (count, 1, 129, 626)
        assert np.load(out / split / "video.npy").shape == (count, 3, 3, 16, 16)


def test_audio_is_the_clip_track_and_frames_follow_fps(prepared: tuple[Path, dict]) -> None:
    # Each class's clips carry one tone; at 16 kHz with n_fft 256 a tone of f Hz peaks in bin f / 62.5,
    # in (nearly) every frame: the 1 s track is repeated to fill the 5 s window, and the joins of the
    # AAC-coded repeats are the only frames allowed to differ.
    out, meta = prepared
    audio = np.load(out / "test" / "audio.npy").astype(np.float64)
    labels = np.load(out / "test" / "label.npy")
    for row, label in enumerate(labels):
        expected_bin = TONES[meta["class_names"][label]] / 62.5
        peaks = audio[row, 0, :, 5:-5].argmax(axis=0)
        assert np.mean(peaks == expected_bin) > 0.9, np.bincount(peaks)
    # 3 s clips at 10 fps sampled at 1 fps: frames 0, 10, 20, all three kept.
    video = np.load(out / "test" / "video.npy").astype(np.float64).mean(axis=(2, 3, 4))
    np.testing.assert_allclose(video, [[0, 10 * GRAY_STEP, 20 * GRAY_STEP]] * 3, atol=8)


def test_loader_reads_the_folder(prepared: tuple[Path, dict]) -> None:
    out, meta = prepared
    data = load_dataset(load_config(None, ["dataset.name=vggsound", f"dataset.root={out}"]).dataset)
    assert data.num_classes == 3 and data.size("test") == 3
    assert data.modalities["audio"].shape == (1, 129, 626)


def test_name_format_and_csv_errors(raw: Path, tmp_path: Path) -> None:
    with pytest.raises(G2DError, match="--name-format"):
        prepare_vggsound(raw, tmp_path / "x", name_format="{id}_{begin}.mp4", **SETTINGS)
    with pytest.raises(G2DError, match="too few"):
        prepare_vggsound(raw, tmp_path / "x", name_format="{id}_{start}_{end}.mp4", **SETTINGS)
    assert main(["prepare", "vggsound", "--root", str(raw), "--out", str(tmp_path / "x"), "--size", "4"]) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("youtube_id,start,label,split\nabc,12,dog,validation\n")
    with pytest.raises(G2DError, match=r"bad.csv:2: split must be train or test"):
        read_vggsound_csv(bad)
    assert not (tmp_path / "x").exists()
