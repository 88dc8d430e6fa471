"""VGGSound: about 200,000 ten-second YouTube clips of 309 sound classes (Chen et al. 2020).

The dataset is published as a CSV of ``youtube_id,start_seconds,label,split`` rows (split
``train`` or ``test``); users download the clips themselves. ``prepare_vggsound`` finds each
row's clip under ``ROOT`` (searched recursively) by the file name ``name_format`` gives:
by default ``{id}_{start:06d}.mp4``, the naming of the VGGSound release and of the G²D and
OGM-GE scripts (fields: ``id``, ``start``, ``end`` = start + 10). Rows whose clip is absent are
counted as missing, not an error: part of YouTube is always gone.

Audio follows the G²D/OGM-GE VGGSound loader: 16 kHz, the clip repeated to fill 10 s, a 5 s
window, STFT n_fft 256 hop 128, log(1e-7 + |X|) -> 1 x 129 x 626. They draw the window's start
at random in [0, 5] s per item; here it is fixed at 2.5 s (their mean), since features are
computed once. Video: ``frames`` frames (3, as G²D) from the 1-fps frames, ``size`` x ``size``.
"""

from __future__ import annotations

import argparse
import csv
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

NAME_FORMAT = "{id}_{start:06d}.mp4"
CLIP_SECONDS = 10
AUDIO = AudioSettings(sample_rate=16000, seconds=5.0, n_fft=256, hop=128, offset_s=2.5)
SPLIT_RULE = (
    "CSV rows with split 'test' are test; rows with split 'train' are train and validation: a stratified "
    "--val-fraction of the train rows whose clip exists, chosen with --seed before any media is decoded. "
    "Rows keep their CSV order; clips that cannot be decoded are skipped afterwards (skipped.csv)."
)


def read_vggsound_csv(path: Path) -> list[tuple[str, int, str, str]]:
    """(youtube id, start seconds, label, split) rows; a header row is allowed, a malformed row is an error."""
    if not path.is_file():
        raise G2DError(f"{path}: VGGSound CSV not found (rows youtube_id,start_seconds,label,train|test)")
    rows = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 4:
                raise G2DError(f"{path}:{line}: expected 4 fields youtube_id,start_seconds,label,split, got {len(row)}")
            youtube_id, start, label, split = (field.strip() for field in row)
            if not start.lstrip("-").isdigit():
                if line == 1:
                    continue
                raise G2DError(f"{path}:{line}: start seconds {start!r} is not an integer")
            if split not in ("train", "test"):
                raise G2DError(f"{path}:{line}: split must be train or test, got {split!r}")
            if not youtube_id or not label:
                raise G2DError(f"{path}:{line}: empty youtube id or label")
            rows.append((youtube_id, int(start), label, split))
    if not rows:
        raise G2DError(f"{path}: no clip rows")
    return rows


def clip_name(name_format: str, youtube_id: str, start: int) -> str:
    """The file name of a row's clip under ``name_format`` (fields id, start, end)."""
    try:
        return name_format.format(id=youtube_id, start=start, end=start + CLIP_SECONDS)
    except (KeyError, IndexError, ValueError) as error:
        raise G2DError(f"--name-format {name_format!r}: cannot format ({error!r}); use fields id, start, end") from error


def index_files(root: Path) -> dict[str, Path]:
    """Every file under ``root`` by its name; two files with one name are an error naming both."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        if path.name in found:
            raise G2DError(f"{root}: two clips named {path.name}: {found[path.name]} and {path}")
        found[path.name] = path
    return found


def prepare_vggsound(
    root: Path,
    out: Path,
    csv_path: Path | None = None,
    name_format: str = NAME_FORMAT,
    fps: float = 1.0,
    frames: int = 3,
    size: int = 224,
    val_fraction: float = 0.1,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Write the prepared VGGSound folder ``out`` from the clips under ``root``; returns prepare.json's content."""
    root, out = Path(root), Path(out)
    csv_path = Path(csv_path) if csv_path is not None else root / "vggsound.csv"
    if not root.is_dir():
        raise G2DError(f"{root}: VGGSound clip folder not found")
    if not 0.0 < val_fraction < 1.0:
        raise G2DError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    video = VideoSettings(fps=fps, frames=frames, size=size)
    check_settings(AUDIO, video)
    rows = read_vggsound_csv(csv_path)
    classes = sorted({label for _, _, label, _ in rows})
    class_index = {label: index for index, label in enumerate(classes)}
    say(progress, f"vggsound: {len(rows)} CSV rows, {len(classes)} classes; indexing {root}")
    files = index_files(root)

    skipped = SkipLog()
    found: dict[str, list[tuple[ClipJob, int]]] = {"train": [], "test": []}
    for youtube_id, start, label, split in rows:
        name = clip_name(name_format, youtube_id, start)
        if name not in files:
            skipped.add(split, name, "missing: no such file under the clip folder", loud=False)
            continue
        job = ClipJob(name, files[name], files[name], AUDIO, video)
        found[split].append((job, class_index[label]))
    say(progress, f"vggsound: found {len(found['train'])} train and {len(found['test'])} test clips "
                  f"({len(skipped.rows)} rows without a clip)")
    if len(found["train"]) < 2 or not found["test"]:
        raise G2DError(f"{root}: too few of the CSV's clips found (check --name-format {name_format!r})")

    specs = modality_specs(AUDIO, video)
    with PreparedWriter(out, overwrite) as writer:
        labels = write_labelled_splits(writer, "vggsound", found, val_fraction, seed, workers, skipped, progress)
        counts = {split: {"clips": int(len(kept)), "classes_present": int(len(np.unique(kept)))}
                  for split, kept in labels.items()}
        meta = {
            "dataset": "vggsound",
            "task": "classification",
            "class_names": classes,
            "modalities": {
                "audio": spec_entry(specs["audio"], np.float16),
                "video": spec_entry(specs["video"], np.uint8),
            },
            "splits": {split: counts[split]["clips"] for split in labels},
            "sources": {"root": str(root), "csv": str(csv_path), "name_format": name_format},
            "val_fraction": val_fraction,
            "settings": {"seed": seed, "audio": AUDIO.describe(), "video": video.describe()},
            "split_rule": SPLIT_RULE,
            "class_rule": "class index = position of the label in the sorted list of all labels in the CSV",
            "counts": counts,
            "skipped": skipped.counts(),
            "notes": {"split": "validation is a stratified part of the CSV's train rows fixed at prepare time (prepare.json)"},
        }
        meta = writer.finish(meta, skipped)
    say(progress, f"vggsound: wrote {out}")
    return meta


def vggsound_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "folder of downloaded clips (searched recursively)")
    parser.add_argument("--csv", type=Path, default=None, help="the published vggsound.csv (default: ROOT/vggsound.csv)")
    parser.add_argument("--name-format", default="{id}_{start:06d}.mp4", help="clip file name (fields id, start, end)")
    media_arguments(parser, frames=3)


def run_vggsound(args: argparse.Namespace) -> dict:
    return prepare_vggsound(csv_path=args.csv, name_format=args.name_format, **media(args), **common(args))


DATASETS.register(
    "vggsound", task="classification", root="the folder written by g2d prepare vggsound",
    prepare=PrepareCommand("VGGSound from the CSV and downloaded clips", vggsound_arguments, run_vggsound,
                           describe_splits))(load_prepared_dataset)
