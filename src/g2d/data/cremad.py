"""CREMA-D: 7,442 clips of 91 actors speaking 12 sentences with six emotions (Cao et al. 2014).

``prepare_cremad`` turns the dataset as downloaded into a prepared folder (see ``prepared.py``):

    ROOT/AudioWAV/<clip>.wav       the dataset's 16 kHz mono recordings
    ROOT/VideoFlash/<clip>.flv     its videos (a <clip>.mp4 there is used when no .flv exists)
    SPLIT_DIR/train.csv, test.csv  rows ``clip_name,EMOTION``: the split of the OGM-GE and G²D codes

Audio follows those codes: 22,050 Hz, the clip repeated to fill 3 s, STFT n_fft 512 hop 353,
log(1e-7 + |X|) -> 1 x 257 x 188. Video: ``frames`` frames sampled at ``fps`` (G²D: one frame
from the 1-fps frames), resized to ``size`` x ``size``. Validation rows are a stratified
``val_fraction`` of train.csv chosen with ``seed`` before any media is decoded.
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

import numpy as np

from g2d.data.audiovisual import (
    AudioSettings,
    ClipJob,
    VideoSettings,
    check_settings,
    modality_specs,
    write_labelled_splits,
)
from g2d.data.base import DATASETS
from g2d.data.commands import (
    PrepareCommand,
    common,
    common_arguments,
    describe_splits,
    media,
    media_arguments,
)
from g2d.data.prepared import (
    PreparedWriter,
    SkipLog,
    load_prepared_dataset,
    say,
    spec_entry,
)
from g2d.errors import G2DError

EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
EMOTION_NAMES = ("neutral", "happy", "sad", "fear", "disgust", "anger")
CLIP_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
VIDEO_SUFFIXES = (".flv", ".mp4")
AUDIO = AudioSettings(sample_rate=22050, seconds=3.0, n_fft=512, hop=353)
SPLIT_RULE = (
    "test.csv rows are test; train.csv rows are train and validation: a stratified --val-fraction of the "
    "train.csv clips whose files exist, chosen with --seed before any media is decoded. Rows keep their CSV "
    "order within a split; clips that cannot be decoded are skipped afterwards (skipped.csv)."
)


def read_split_list(path: Path) -> list[tuple[str, int]]:
    """(clip name, class index) rows of a ``clip_name,EMOTION`` file; a bad row is an error naming its line."""
    if not path.is_file():
        raise G2DError(f"{path}: CREMA-D split list not found (rows clip_name,EMOTION, as in the OGM-GE repository)")
    rows: list[tuple[str, int]] = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise G2DError(f"{path}:{line}: expected clip_name,EMOTION, got {row!r}")
            name, emotion = row[0].strip(), row[1].strip()
            match = CLIP_NAME.match(name)
            if match is None:
                if line == 1 and emotion.upper() not in EMOTIONS:
                    continue
                raise G2DError(f"{path}:{line}: {name!r} is not a CREMA-D clip name like 1001_DFA_ANG_XX")
            if emotion not in EMOTIONS or emotion != match.group(3):
                raise G2DError(f"{path}:{line}: emotion {emotion!r} does not match clip {name!r} (one of {EMOTIONS})")
            rows.append((name, EMOTIONS.index(emotion)))
    if not rows:
        raise G2DError(f"{path}: no clip rows")
    return rows


def find_video(folder: Path, clip: str) -> Path | None:
    for suffix in VIDEO_SUFFIXES:
        candidate = folder / f"{clip}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def prepare_cremad(
    root: Path,
    out: Path,
    split_dir: Path | None = None,
    fps: float = 1.0,
    frames: int = 1,
    size: int = 224,
    val_fraction: float = 0.1,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Write the prepared CREMA-D folder ``out`` from the raw dataset at ``root``; returns prepare.json's content."""
    root, out = Path(root), Path(out)
    split_dir = Path(split_dir) if split_dir is not None else root
    audio_dir, video_dir = root / "AudioWAV", root / "VideoFlash"
    for folder in (audio_dir, video_dir):
        if not folder.is_dir():
            raise G2DError(f"{folder}: CREMA-D folder not found (--root must hold AudioWAV/ and VideoFlash/)")
    if not 0.0 < val_fraction < 1.0:
        raise G2DError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    video = VideoSettings(fps=fps, frames=frames, size=size)
    check_settings(AUDIO, video)

    lists = {name: read_split_list(split_dir / f"{name}.csv") for name in ("train", "test")}
    overlap = {c for c, _ in lists["train"]} & {c for c, _ in lists["test"]}
    if overlap:
        raise G2DError(f"{split_dir}: {len(overlap)} clips are in both train.csv and test.csv, e.g. {sorted(overlap)[0]}")
    skipped = SkipLog()
    found: dict[str, list[tuple[ClipJob, int]]] = {}
    for name, entries in lists.items():
        found[name] = []
        for clip, label in entries:
            wav, clip_video = audio_dir / f"{clip}.wav", find_video(video_dir, clip)
            if not wav.is_file():
                skipped.add(name, clip, f"missing: {wav} not found")
            elif clip_video is None:
                skipped.add(name, clip, f"missing: no {clip}.flv or {clip}.mp4 in {video_dir}")
            else:
                found[name].append((ClipJob(clip, wav, clip_video, AUDIO, video), label))
    if len(found["train"]) < 2 or not found["test"]:
        raise G2DError(f"{root}: too few clips of the split lists found in AudioWAV/ and VideoFlash/ (see warnings)")

    specs = modality_specs(AUDIO, video)
    with PreparedWriter(out, overwrite) as writer:
        labels = write_labelled_splits(writer, "cremad", found, val_fraction, seed, workers, skipped, progress)
        counts = {split: {"clips": int(len(kept)), "per_class": np.bincount(kept, minlength=6).tolist()}
                  for split, kept in labels.items()}
        meta = {
            "dataset": "cremad",
            "task": "classification",
            "class_names": list(EMOTION_NAMES),
            "class_codes": list(EMOTIONS),
            "modalities": {
                "audio": spec_entry(specs["audio"], np.float16),
                "video": spec_entry(specs["video"], np.uint8),
            },
            "splits": {split: counts[split]["clips"] for split in labels},
            "sources": {"root": str(root), "split_dir": str(split_dir)},
            "val_fraction": val_fraction,
            "settings": {"seed": seed, "audio": AUDIO.describe(), "video": video.describe()},
            "split_rule": SPLIT_RULE,
            "counts": counts,
            "skipped": skipped.counts(),
            "notes": {"split": "validation is a stratified part of train.csv fixed at prepare time (prepare.json)"},
        }
        meta = writer.finish(meta, skipped)
    say(progress, f"cremad: wrote {out}")
    return meta


def cremad_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "CREMA-D folder with AudioWAV/ and VideoFlash/")
    parser.add_argument("--split-dir", type=Path, default=None, help="folder of train.csv and test.csv (default: --root)")
    media_arguments(parser, frames=1)


def run_cremad(args: argparse.Namespace) -> dict:
    return prepare_cremad(split_dir=args.split_dir, **media(args), **common(args))


DATASETS.register(
    "cremad", task="classification", root="the folder written by g2d prepare cremad",
    prepare=PrepareCommand("CREMA-D from AudioWAV/ and VideoFlash/", cremad_arguments, run_cremad,
                           describe_splits))(load_prepared_dataset)
