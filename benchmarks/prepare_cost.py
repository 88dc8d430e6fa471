"""Measure what ``g2d prepare cremad`` and ``g2d prepare vggsound`` cost per clip, on clips of the real formats.

The paper's media cannot be downloaded here, so this writes synthetic clips shaped like the
real ones (CREMA-D: 480x360 FLV1 video at 30 fps, 2.5 s, with a 16 kHz wav built from a real FSDD
recording; VGGSound: 10 s 640x360 H.264 at 25 fps with 44.1 kHz AAC audio), prepares them
with the default settings and prints seconds and bytes per clip, to extrapolate to the full
datasets. Needs PyAV.

    python benchmarks/prepare_cost.py --fsdd ../shared/data/fsdd/recordings --clips 40 --work /tmp/prepare_cost
"""

from __future__ import annotations

import argparse
import csv
import shutil
import time
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from g2d.data.audio import read_wav, repeat_to_length, resample
from g2d.data.cremad import EMOTIONS, prepare_cremad
from g2d.data.vggsound import prepare_vggsound


def write_clip(path: Path, seconds: float, fps: int, size: tuple[int, int], codec: str, audio: np.ndarray | None) -> None:
    """A video of a moving gradient (plus an AAC track when ``audio`` is given at 44.1 kHz)."""
    width, height = size
    ramp = np.add.outer(np.arange(height), np.arange(width)).astype(np.float64)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        sound = container.add_stream("aac", rate=44100) if audio is not None else None
        if sound is not None:
            sound.layout = "mono"
        for index in range(int(seconds * fps)):
            level = ((ramp + 4 * index) % 256).astype(np.uint8)
            pixels = np.stack([level, level[::-1], 255 - level], axis=2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            frame = av.AudioFrame.from_ndarray((audio * 32767).astype(np.int16)[None], format="s16", layout="mono")
            frame.sample_rate = 44100
            for packet in [*sound.encode(frame), *sound.encode()]:
                container.mux(packet)


def speech(recording: Path, rate: int, seconds: float) -> np.ndarray:
    wave, source_rate = read_wav(recording)
    return 0.9 * repeat_to_length(resample(wave, source_rate, rate), int(rate * seconds))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fsdd", type=Path, required=True, help="folder of FSDD wavs (the speech of the clips)")
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    recordings = sorted(args.fsdd.glob("*.wav"))[: args.clips]

    cremad = args.work / "cremad_raw"
    (cremad / "AudioWAV").mkdir(parents=True)
    (cremad / "VideoFlash").mkdir()
    names = [f"{1001 + i // 6}_DFA_{EMOTIONS[i % 6]}_XX" for i in range(len(recordings))]
    for name, recording in zip(names, recordings):
        sf.write(cremad / "AudioWAV" / f"{name}.wav", speech(recording, 16000, 2.5), 16000, subtype="PCM_16")
        write_clip(cremad / "VideoFlash" / f"{name}.flv", 2.5, 30, (480, 360), "flv", None)
    for split, chosen in (("train", names[: len(names) * 3 // 4]), ("test", names[len(names) * 3 // 4 :])):
        with (cremad / f"{split}.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows([n, n.split("_")[2]] for n in chosen)

    vggsound = args.work / "vggsound_raw"
    vggsound.mkdir()
    rows = []
    for index, recording in enumerate(recordings):
        youtube_id, label = f"clip{index:04d}", f"class {index % 4}"
        rows.append((youtube_id, 30, label, "test" if index % 4 == 3 and index >= 12 else "train"))
        write_clip(vggsound / f"{youtube_id}_000030.mp4", 10.0, 25, (640, 360), "libx264", speech(recording, 44100, 10.0))
    with (vggsound / "vggsound.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)

    for name, prepare, raw in (("cremad", prepare_cremad, cremad), ("vggsound", prepare_vggsound, vggsound)):
        out = args.work / f"{name}_prepared"
        started = time.perf_counter()
        meta = prepare(raw, out, workers=args.workers, progress=False)
        seconds = time.perf_counter() - started
        clips = sum(meta["splits"].values())
        print(f"{name}: {clips} clips in {seconds:.1f} s with {args.workers} worker(s): "
              f"{seconds / clips * 1000:.0f} ms per clip; raw {folder_bytes(raw) / clips / 1e3:.0f} kB per clip, "
              f"prepared {folder_bytes(out) / clips / 1e3:.0f} kB per clip")


if __name__ == "__main__":
    main()
