"""Reading video frames and audio tracks from media files with PyAV, once, at preparation time.

PyAV is imported only here and only when a video dataset is prepared (``pip install 'g2d[video]'``).
Frames are sampled the way the OGM-GE and G²D preprocessing scripts extract them: at ``fps``
frames per second from the clip's start (the first frame at or after each sampling time), then
``count`` of those are kept, evenly spread over the clip, and squashed to ``size`` x ``size``
(their test-time ``Resize((224, 224))``).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import numpy as np

from g2d.errors import G2DError

TIME_EPSILON = 1e-6
LFS_MAGIC = b"version https://git-lfs"


def _av() -> ModuleType:
    try:
        import av
    except ImportError as error:
        raise G2DError("reading video needs PyAV: pip install 'g2d[video]' (or: pip install av)") from error
    return av


def _image_module() -> ModuleType:
    try:
        from PIL import Image
    except ImportError as error:
        raise G2DError("resizing video frames needs Pillow: pip install pillow") from error
    return Image


def lfs_pointer(path: Path) -> bool:
    """True when a media file is a git-lfs pointer (a clone without ``git lfs pull``), not the media itself."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(LFS_MAGIC)) == LFS_MAGIC
    except OSError:
        return False


def kept_positions(sampled: int, count: int) -> list[int]:
    """Which of ``sampled`` frames to keep so that ``count`` are evenly spread (the middle one when count is 1).

    Position i is floor((i + 0.5) * sampled / count); fewer sampled frames than ``count`` repeat.
    """
    return [min(sampled - 1, int(math.floor((i + 0.5) * sampled / count))) for i in range(count)]


def sample_frames(path: Path, fps: float, count: int, size: int) -> np.ndarray:
    """``count`` RGB frames of a video as uint8 ``[count, 3, size, size]``; a bad file raises G2DError naming it."""
    av = _av()
    image = _image_module()
    sampled = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise G2DError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            first: float | None = None
            next_time = 0.0
            for index, frame in enumerate(container.decode(stream)):
                time = float(frame.time) if frame.time is not None else index / rate
                first = time if first is None else first
                elapsed = time - first
                if elapsed + TIME_EPSILON >= next_time:
                    sampled.append(frame.to_image())
                    next_time = (math.floor(elapsed * fps + TIME_EPSILON) + 1) / fps
    except G2DError:
        raise
    except (av.FFmpegError, OSError, ValueError, RuntimeError, MemoryError) as error:
        raise G2DError(f"{path}: cannot decode video ({error})") from error
    if not sampled:
        raise G2DError(f"{path}: no video frames decoded")
    frames = np.empty((count, 3, size, size), dtype=np.uint8)
    for slot, position in enumerate(kept_positions(len(sampled), count)):
        resized = sampled[position].convert("RGB").resize((size, size), image.BILINEAR)
        frames[slot] = np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)
    return frames


def read_audio_track(path: Path) -> tuple[np.ndarray, int]:
    """The first audio stream of a media file as float32 mono in [-1, 1] and its sample rate."""
    av = _av()
    chunks = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise G2DError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            rate = int(stream.rate or stream.codec_context.sample_rate or 0)
            if rate <= 0:
                raise G2DError(f"{path}: audio stream has no sample rate")
            mono = av.AudioResampler(format="flt", layout="mono", rate=rate)
            for frame in container.decode(stream):
                chunks.extend(out.to_ndarray().reshape(-1) for out in mono.resample(frame))
            chunks.extend(out.to_ndarray().reshape(-1) for out in mono.resample(None))
    except G2DError:
        raise
    except (av.FFmpegError, OSError, ValueError, RuntimeError, MemoryError) as error:
        raise G2DError(f"{path}: cannot decode audio ({error})") from error
    wave = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, dtype=np.float32)
    if wave.size == 0:
        raise G2DError(f"{path}: audio stream has no samples")
    return np.clip(wave, -1.0, 1.0), rate
