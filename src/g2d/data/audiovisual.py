"""Audio-visual clips to cached arrays: a log spectrogram and a few frames per clip, computed once.

Shared by the CREMA-D and VGGSound preparations. Each clip is decoded independently (in worker
processes when asked) and written into memory-mapped ``.npy`` files in input order, so the
output is identical for any worker count; a clip that cannot be decoded is logged and skipped.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from g2d.data.audio import log_spectrogram, read_wav, repeat_to_length, resample
from g2d.data.base import ModalitySpec, stratified_split
from g2d.data.media import lfs_pointer, read_audio_track, sample_frames
from g2d.data.prepared import LABEL, PreparedWriter, SkipLog, map_items, say
from g2d.errors import G2DError

SOUNDFILE_SUFFIXES = (".wav", ".flac", ".ogg")
AUDIO_DTYPE = np.float16
VIDEO_DTYPE = np.uint8
PROGRESS_EVERY = 500


@dataclass(frozen=True)
class AudioSettings:
    """A fixed-length window of the clip, repeated end to end when shorter, as a log-magnitude STFT."""

    sample_rate: int
    seconds: float
    n_fft: int
    hop: int
    offset_s: float = 0.0
    floor: float = 1e-7
    pad_mode: str = "constant"

    @property
    def samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(1, frequency bins, frames) of a centred STFT over ``samples``."""
        return (1, self.n_fft // 2 + 1, 1 + self.samples // self.hop)

    def describe(self) -> dict:
        return {
            **asdict(self),
            "shape": list(self.shape),
            "steps": (
                f"decode, mix to mono, resample to {self.sample_rate} Hz, repeat the clip end to end until "
                f"{self.offset_s + self.seconds:g} s, keep [{self.offset_s:g}, {self.offset_s + self.seconds:g}) s, "
                f"clip to [-1, 1], centred STFT (Hann, n_fft {self.n_fft}, hop {self.hop}, {self.pad_mode} padding), "
                f"log({self.floor:g} + |X|), stored as float16"
            ),
        }


@dataclass(frozen=True)
class VideoSettings:
    """``frames`` frames from those sampled at ``fps`` per second, squashed to ``size`` x ``size`` RGB."""

    fps: float
    frames: int
    size: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.frames, 3, self.size, self.size)

    def describe(self) -> dict:
        return {
            **asdict(self),
            "shape": list(self.shape),
            "steps": (
                f"decode every frame; sample the first frame at or after each multiple of 1/{self.fps:g} s from "
                f"the first frame; keep {self.frames} of the sampled frames at positions "
                f"floor((i + 0.5) * sampled / {self.frames}); resize to {self.size}x{self.size} (bilinear, aspect "
                "not kept, as the references' test transform); stored as uint8 RGB, scaled by 1/255 at batch time"
            ),
        }


def check_settings(audio: AudioSettings, video: VideoSettings) -> None:
    """Reject settings that cannot produce arrays, naming the option."""
    if audio.seconds <= 0 or audio.offset_s < 0:
        raise G2DError(f"audio window must be positive and start at >= 0 s, got {audio.seconds} s from {audio.offset_s} s")
    if not video.fps > 0:
        raise G2DError(f"--fps must be > 0, got {video.fps}")
    if video.frames < 1:
        raise G2DError(f"--frames must be >= 1, got {video.frames}")
    if video.size < 8:
        raise G2DError(f"--size must be >= 8 pixels, got {video.size}")


def modality_specs(audio: AudioSettings, video: VideoSettings) -> dict[str, ModalitySpec]:
    return {
        "audio": ModalitySpec(kind="image", shape=audio.shape),
        "video": ModalitySpec(kind="video", shape=video.shape, scale=1 / 255),
    }


@dataclass(frozen=True)
class ClipJob:
    """One clip to decode: its name for reports, its audio source and its video file."""

    name: str
    audio: Path
    video: Path
    audio_settings: AudioSettings
    video_settings: VideoSettings


def audio_spectrogram(path: Path, settings: AudioSettings) -> np.ndarray:
    """The clip's log spectrogram ``[1, bins, frames]`` as float16; sound files via soundfile, others via PyAV."""
    wave, rate = read_wav(path) if path.suffix.lower() in SOUNDFILE_SUFFIXES else read_audio_track(path)
    wave = resample(wave, rate, settings.sample_rate)
    start = int(round(settings.offset_s * settings.sample_rate))
    window = repeat_to_length(wave, start + settings.samples)[start:]
    window = np.clip(window, -1.0, 1.0)
    logs = log_spectrogram(torch.from_numpy(window)[None], settings.n_fft, settings.hop, settings.floor, settings.pad_mode)
    if not torch.isfinite(logs).all():
        raise G2DError(f"{path}: spectrogram has non-finite values")
    return logs.numpy().astype(AUDIO_DTYPE)


def clip_arrays(job: ClipJob) -> tuple[np.ndarray, np.ndarray] | str:
    """(spectrogram, frames) of a clip, or the reason it cannot be read (returned, so workers never raise)."""
    for path in dict.fromkeys((job.audio, job.video)):
        if lfs_pointer(path):
            return f"{path} is a git-lfs pointer, not the media (fetch the files with: git lfs pull)"
    try:
        return audio_spectrogram(job.audio, job.audio_settings), sample_frames(
            job.video, job.video_settings.fps, job.video_settings.frames, job.video_settings.size
        )
    except G2DError as error:
        return str(error)
    except Exception as error:  # a decoder can fail in ways no list foresees; one clip must not end the run
        return f"{job.name}: {type(error).__name__}: {error}"


def write_clips(
    writer: PreparedWriter,
    split: str,
    jobs: list[ClipJob],
    workers: int,
    skipped: SkipLog,
    progress: bool,
) -> np.ndarray:
    """Decode ``jobs`` into the split's audio.npy and video.npy; returns the indices of the clips kept."""
    if not jobs:
        raise G2DError(f"split {split}: no clips to prepare")
    audio_shape, video_shape = jobs[0].audio_settings.shape, jobs[0].video_settings.shape
    audio = writer.open(split, "audio", (len(jobs), *audio_shape), AUDIO_DTYPE)
    video = writer.open(split, "video", (len(jobs), *video_shape), VIDEO_DTYPE)
    kept: list[int] = []
    started = time.perf_counter()
    for index, (job, result) in enumerate(zip(jobs, map_items(clip_arrays, jobs, workers))):
        if isinstance(result, str):
            skipped.add(split, job.name, f"unreadable: {result}")
        else:
            audio[len(kept)], video[len(kept)] = result
            kept.append(index)
        done = index + 1
        if done % PROGRESS_EVERY == 0 or done == len(jobs):
            rate = done / max(time.perf_counter() - started, 1e-9)
            say(progress, f"  {split}: {done}/{len(jobs)} clips ({rate:.1f} clips/s), {done - len(kept)} skipped")
    audio.flush()
    video.flush()
    del audio, video
    if not kept:
        raise G2DError(f"split {split}: none of its {len(jobs)} clips could be read (see the warnings above)")
    writer.trim(split, "audio", len(kept))
    writer.trim(split, "video", len(kept))
    return np.asarray(kept, dtype=np.int64)


def write_labelled_splits(
    writer: PreparedWriter,
    dataset: str,
    found: dict[str, list[tuple[ClipJob, int]]],
    val_fraction: float,
    seed: int,
    workers: int,
    skipped: SkipLog,
    progress: bool,
) -> dict[str, np.ndarray]:
    """Carve a stratified validation split from ``found["train"]``, then decode each split's clips
    and save the labels of those kept; returns the kept labels per split."""
    rest, held = stratified_split(np.array([label for _, label in found["train"]]), val_fraction, seed)
    chosen = {"train": [found["train"][i] for i in rest], "val": [found["train"][i] for i in held], "test": found["test"]}
    labels: dict[str, np.ndarray] = {}
    for split, entries in chosen.items():
        say(progress, f"{dataset}: {split}: decoding {len(entries)} clips with {workers} worker(s)")
        kept = write_clips(writer, split, [job for job, _ in entries], workers, skipped, progress)
        labels[split] = np.asarray([label for _, label in entries], dtype=np.int64)[kept]
        writer.save(split, LABEL, labels[split])
    return labels
