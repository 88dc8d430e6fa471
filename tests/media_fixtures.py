"""Small raw-layout fixtures for the preparation tests: real FSDD recordings and videos written with PyAV."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from g2d.data.cremad import EMOTIONS

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("G2D_DATA_ROOT", ROOT.parent / "shared" / "data"))
FSDD = DATA_ROOT / "fsdd" / "recordings"
VIDEO_FPS = 10
GRAY_STEP = 12


def fsdd_recordings(count: int) -> list[Path]:
    """``count`` real FSDD wavs (sorted, so fixtures are the same every run); skips the test when absent."""
    if not FSDD.is_dir():
        pytest.skip(f"real FSDD recordings not found under {DATA_ROOT} (set G2D_DATA_ROOT)")
    files = sorted(FSDD.glob("*.wav"))[:count]
    if len(files) < count:
        pytest.skip(f"fewer than {count} FSDD recordings in {FSDD}")
    return files


def write_video(path: Path, seconds: float, codec: str = "flv", size: tuple[int, int] = (64, 48), audio: np.ndarray | None = None) -> None:
    """A video whose frame i is uniformly gray at level i * GRAY_STEP (mod 256), optionally with a mono audio track."""
    import av

    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=VIDEO_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=16000)
            sound.layout = "mono"
        for index in range(int(round(seconds * VIDEO_FPS))):
            pixels = np.full((height, width, 3), (index * GRAY_STEP) % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            samples = (np.clip(audio, -1, 1) * 32767).astype(np.int16)[None]
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate = 16000
            for packet in sound.encode(frame):
                container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)


def copy_wav(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


CORRUPT = "1004_DFA_HAP_XX"
NO_AUDIO = "1005_DFA_SAD_XX"
LFS = "1006_DFA_FEA_XX"
LONG, SHORT = 2.5, 1.5


def clip(actor: int, emotion: str) -> str:
    return f"{actor}_DFA_{emotion}_XX"


def write_cremad_raw(root: Path) -> Path:
    """A tiny CREMA-D in the real layout under ``root``: AudioWAV/ + VideoFlash/ + split lists, 13 train rows
    (one corrupt video), 8 test rows (one without audio, one whose wav is a git-lfs pointer, as a clone
    without ``git lfs pull`` leaves it). Clips of the emotions NEU, SAD, DIS last 2.5 s, the others 1.5 s.

    Shared by tests/test_cremad.py and benchmarks/prepare_hang.py.
    """
    (root / "VideoFlash").mkdir(parents=True)
    train = [clip(actor, emotion) for actor in (1001, 1002) for emotion in EMOTIONS] + [CORRUPT]
    test = [clip(1003, emotion) for emotion in EMOTIONS] + [NO_AUDIO, LFS]
    for name, wav in zip(train + test, fsdd_recordings(len(train) + len(test))):
        if name != NO_AUDIO:
            copy_wav(wav, root / "AudioWAV" / f"{name}.wav")
        if name == LFS:
            (root / "AudioWAV" / f"{name}.wav").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\n")
        if name == CORRUPT:
            (root / "VideoFlash" / f"{name}.flv").write_bytes(b"FLV\x01 this is not a video" * 20)
        else:
            write_video(root / "VideoFlash" / f"{name}.flv", seconds=LONG if name.split("_")[2] in EMOTIONS[::2] else SHORT)
    for split, names in (("train", train), ("test", test)):
        with (root / f"{split}.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows([name, name.split("_")[2]] for name in names)
    return root
