"""Build ``avdigits``: an AV-MNIST-format dataset from real MNIST, FSDD and environmental-noise files.

The recipe follows AV-MNIST (Vielzeuf et al. 2018): MNIST images degraded by PCA keeping about
25% of their energy, paired by digit label with spoken-digit spectrograms mixed with noise. The
output folder has exactly the AV-MNIST layout (``image/``, ``audio/``, ``*_labels.npy``), so the
same loader reads both.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import re
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from g2d.data.audio import log_spectrogram, noise_gain, read_wav, resample
from g2d.data.avmnist import AVMNISTOptions, load_avmnist_layout
from g2d.data.base import DATASETS
from g2d.data.commands import PrepareCommand
from g2d.data.prepared import check_out, publish, say, staging_dir, warn
from g2d.errors import G2DError

SAMPLE_RATE = 8000
SPEC_SIZE = 112
N_FFT = 2 * (SPEC_SIZE - 1)
LOG_FLOOR = 1e-6
RANGE_PERCENTILES = (1.0, 99.9)
RANGE_SAMPLE = 1024
BATCH = 500
TEST_TAKES = 5
SILENCE_RUN_S = 0.02
MAX_NOISE_DRAWS = 100
T10K_IMAGES = "t10k-images-idx3-ubyte.gz"
T10K_LABELS = "t10k-labels-idx1-ubyte.gz"
MNIST_5K = "mnist_5k.csv.gz"
SOURCES_COLUMNS = ("split", "row", "label", "fsdd_file", "mnist_source", "mnist_index", "noise_file", "noise_offset")
FSDD_NAME = re.compile(r"^(\d)_([A-Za-z0-9]+)_(\d+)\.wav$", re.IGNORECASE)
SPLIT_RULE = (
    "Recordings: FSDD's own convention, takes 0-4 of each speaker and digit are test, takes 5-49 train. "
    "Images: the first test_images digits of the official MNIST test file (t10k) are test; all of mnist_5k "
    "plus the rest of t10k are train. Each image is used exactly once and is paired with a recording of the "
    "same digit from its own split, cycling through that split's recordings of the digit in a seeded random "
    "order, each pair with a fresh random noise clip and offset; no recording and no image is on both sides."
)


@dataclass
class _Split:
    """The pairs of one split, in output row order."""

    name: str
    source: list[str]
    index: np.ndarray
    label: np.ndarray
    pixels: np.ndarray
    fsdd: list[str] = field(default_factory=list)
    noise: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    offset: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    gain: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))


def prepare_avdigits(
    fsdd: Path,
    mnist: Path,
    noise: Path,
    out: Path,
    seed: int = 0,
    snr_db: float = -20.0,
    pca_energy: float = 0.25,
    duration_s: float = 1.0,
    test_images: int = 3000,
    max_train: int | None = None,
    max_test: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Write the avdigits dataset into ``out`` in the AV-MNIST layout and return the recorded settings."""
    fsdd, mnist, noise, out = Path(fsdd), Path(mnist), Path(noise), Path(out)
    for folder, option in ((fsdd, "fsdd"), (mnist, "mnist"), (noise, "noise")):
        if not folder.is_dir():
            raise G2DError(f"--{option} {folder}: folder not found")
    length, hop = _stft_geometry(duration_s)
    _check_settings(snr_db, pca_energy, test_images, max_train, max_test)
    check_out(out, overwrite)
    rng = np.random.default_rng(seed)

    for name in (T10K_IMAGES, T10K_LABELS, MNIST_5K):
        if not (mnist / name).is_file():
            raise G2DError(f"{mnist / name}: MNIST file not found")
    noise_files = sorted(p for p in noise.rglob("*") if p.is_file() and p.suffix.lower() == ".wav")
    if not noise_files:
        raise G2DError(f"{noise}: no .wav files in the noise folder")
    recordings = _index_fsdd(fsdd)

    t10k_pixels, t10k_labels = _read_t10k(mnist)
    extra_pixels, extra_labels = _read_mnist_csv(mnist / MNIST_5K)
    if test_images > len(t10k_labels):
        raise G2DError(f"--test-images {test_images}: exceeds the {len(t10k_labels)} images of {mnist / T10K_IMAGES}")
    say(progress, f"avdigits: read MNIST from {mnist}")  # after the checks, so a refusal is its line alone

    test_pool = (["t10k"] * test_images, np.arange(test_images), t10k_labels[:test_images], t10k_pixels[:test_images])
    rest = np.arange(test_images, len(t10k_labels))
    train_pool = (
        ["mnist_5k"] * len(extra_labels) + ["t10k"] * len(rest),
        np.concatenate([np.arange(len(extra_labels)), rest]),
        np.concatenate([extra_labels, t10k_labels[rest]]),
        np.concatenate([extra_pixels, t10k_pixels[rest]]),
    )
    splits = {
        "train": _select_images("train", train_pool, max_train, rng),
        "test": _select_images("test", test_pool, max_test, rng),
    }

    say(progress, "avdigits: PCA on the train images")
    components, energy_kept = _pca_degrade(splits, pca_energy)

    skipped: list[dict[str, str]] = []
    speech: dict[str, tuple[np.ndarray, float]] = {}
    say(progress, f"avdigits: reading recordings from {fsdd}")
    for split in splits.values():
        _pair_recordings(split, recordings[split.name], fsdd, length, speech, skipped, rng)
    say(progress, f"avdigits: drawing noise from {noise}")
    noise_cache: dict[int, np.ndarray | None] = {}
    for split in splits.values():
        _pair_noise(split, noise_files, noise, length, snr_db, speech, noise_cache, skipped, rng)

    mixer = _Mixer(speech=speech, noise=noise_cache, length=length, hop=hop)
    low, high, sample_size = _spectrogram_range(splits["train"], mixer, rng)

    work = staging_dir(out)
    try:
        (work / "image").mkdir()
        (work / "audio").mkdir()
        for split in splits.values():
            say(progress, f"avdigits: writing {split.name} ({len(split.label)} pairs)")
            np.save(work / "image" / f"{split.name}_data.npy", split.pixels)
            np.save(work / f"{split.name}_labels.npy", split.label.astype(np.int64))
            _write_spectrograms(work / "audio" / f"{split.name}_data.npy", split, mixer, low, high)
        _write_sources(work / "sources.csv", splits, noise_files, noise)
        counts: dict[str, object] = {
            name: {
                "pairs": int(len(s.label)),
                "per_class": np.bincount(s.label, minlength=10).tolist(),
                "recordings": len(set(s.fsdd)),
                "images_t10k": int(sum(src == "t10k" for src in s.source)),
                "images_mnist_5k": int(sum(src == "mnist_5k" for src in s.source)),
            }
            for name, s in splits.items()
        }
        counts["noise_files_found"] = len(noise_files)
        counts["noise_files_used"] = len({int(i) for s in splits.values() for i in s.noise})
        summary = {
            "dataset": "avdigits",
            "layout": (
                "AV-MNIST: image/{train,test}_data.npy N x 784 uint8, audio/{train,test}_data.npy "
                "N x 112 x 112 uint8, {train,test}_labels.npy int64, sources.csv one row per pair"
            ),
            "sources": {"fsdd": str(fsdd), "mnist": str(mnist), "noise": str(noise)},
            "seed": seed,
            "split_rule": SPLIT_RULE,
            "caps": {"test_images": test_images, "max_train": max_train, "max_test": max_test},
            "counts": counts,
            "image": {
                "pca_fit": "train images only, centered; every image is projected and reconstructed, clipped to 0..255",
                "pca_energy_requested": pca_energy,
                "pca_components": components,
                "pca_energy_kept": energy_kept,
            },
            "audio": {
                "sample_rate": SAMPLE_RATE,
                "duration_s": duration_s,
                "samples": length,
                "placement": "speech center-padded with zeros or center-cropped to the clip length",
                "snr_db": snr_db,
                "snr_rule": "speech power over the speech samples (not the padding), noise power over the clip",
                "noise": (
                    f"a random noise file per pair, its runs of digital silence (exact zeros, >= {SILENCE_RUN_S} s) "
                    "removed, resampled to 8 kHz, a random segment of the clip length (tiled when shorter)"
                ),
                "noise_offset": "start sample at 8 kHz in the noise file after silence removal and resampling",
                "n_fft": N_FFT,
                "hop": hop,
                "window": "hann",
                "center": True,
                "log": f"log({LOG_FLOOR} + |STFT|)",
                "spectrogram_layout": "rows are 112 frequency bins from 0 Hz to 4 kHz, columns are 112 frames",
                "range": {
                    "low": low,
                    "high": high,
                    "rule": (
                        f"{RANGE_PERCENTILES[0]} and {RANGE_PERCENTILES[1]} percentiles of the log magnitudes of "
                        f"{sample_size} seeded random train spectrograms, applied to both splits"
                    ),
                    "mapping": "uint8 = round(255 * clip((x - low) / (high - low), 0, 1))",
                },
            },
            "files_skipped": skipped,
            "files_skipped_count": len(skipped),
        }
        (work / "prepare.json").write_text(json.dumps(summary, indent=2) + "\n")
        publish(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    say(progress, f"avdigits: wrote {out}")
    return summary


def _stft_geometry(duration_s: float) -> tuple[int, int]:
    """Clip length and hop such that a centered STFT with n_fft=222 gives exactly 112 frames."""
    if not (isinstance(duration_s, (int, float)) and math.isfinite(duration_s) and duration_s >= 0.1):
        raise G2DError(f"duration_s must be a number >= 0.1 seconds, got {duration_s!r}")
    length = int(round(duration_s * SAMPLE_RATE))
    hop = length // (SPEC_SIZE - 1)
    if length // hop != SPEC_SIZE - 1:
        options = sorted({(SPEC_SIZE - 1) * h / SAMPLE_RATE for h in (hop, hop + 1)})
        raise G2DError(
            f"duration_s={duration_s} gives {length} samples, for which no hop yields exactly {SPEC_SIZE} frames; "
            f"use e.g. {options[0]:g} or {options[1]:g}"
        )
    return length, hop


def _check_settings(
    snr_db: float, pca_energy: float, test_images: int, max_train: int | None, max_test: int | None
) -> None:
    """Reject settings that cannot produce a dataset, naming the option as ``g2d prepare avdigits`` spells it."""
    if not math.isfinite(snr_db):
        raise G2DError(f"--snr-db: must be finite, got {snr_db!r}")
    if not 0.0 < pca_energy <= 1.0:
        raise G2DError(f"pca_energy must be in (0, 1], got {pca_energy!r}")
    if test_images < 1:
        raise G2DError(f"--test-images: must be at least 1, got {test_images!r}")
    for option, value in (("--max-train", max_train), ("--max-test", max_test)):
        if value is not None and value < 1:
            raise G2DError(f"{option}: must be at least 1, got {value!r}")


def _read_gzip(path: Path) -> bytes:
    """The decompressed bytes of a required gzip file, or a G2DError naming it."""
    if not path.is_file():
        raise G2DError(f"{path}: MNIST file not found")
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError) as error:
        raise G2DError(f"{path}: cannot read gzip file ({error})") from error


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parse an MNIST IDX file (big-endian header, uint8 payload)."""
    raw = _read_gzip(path)
    header = 4 + 4 * ndim
    if len(raw) < header or struct.unpack(">I", raw[:4])[0] != magic:
        raise G2DError(f"{path}: not an IDX file with magic number {magic}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(dims)):
        raise G2DError(f"{path}: payload has {data.size} bytes, header says {dims}")
    return data.reshape(dims)


def _read_t10k(mnist: Path) -> tuple[np.ndarray, np.ndarray]:
    """The official MNIST test images (N x 784 uint8) and labels (int64)."""
    images = _read_idx(mnist / T10K_IMAGES, 2051, 3)
    labels = _read_idx(mnist / T10K_LABELS, 2049, 1).astype(np.int64)
    if images.shape[1:] != (28, 28):
        raise G2DError(f"{mnist / T10K_IMAGES}: images are {images.shape[1:]}, expected 28 x 28")
    if len(labels) != len(images) or labels.max(initial=0) > 9:
        raise G2DError(f"{mnist / T10K_LABELS}: labels do not match {mnist / T10K_IMAGES}")
    return images.reshape(len(images), 784), labels


def _read_mnist_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The extra MNIST digits from a gzip CSV of 784 pixels then the label per row."""
    raw = _read_gzip(path)
    try:
        table = np.loadtxt(raw.decode("ascii").splitlines(), delimiter=",", dtype=np.int64, ndmin=2)
    except (ValueError, UnicodeDecodeError) as error:
        raise G2DError(f"{path}: cannot parse CSV ({error})") from error
    if table.shape[1] != 785:
        raise G2DError(f"{path}: rows have {table.shape[1]} columns, expected 784 pixels then the label")
    pixels, labels = table[:, :784], table[:, 784]
    bad_pixels = pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255
    if bad_pixels or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise G2DError(f"{path}: pixels must be 0..255 and labels 0..9")
    return pixels.astype(np.uint8), labels


def _index_fsdd(fsdd: Path) -> dict[str, dict[int, list[str]]]:
    """FSDD recordings by split and digit, as paths relative to the folder; unparsable names are ignored."""
    found: dict[str, dict[int, list[str]]] = {"train": {d: [] for d in range(10)}, "test": {d: [] for d in range(10)}}
    for path in sorted(fsdd.rglob("*")):
        match = FSDD_NAME.match(path.name)
        if match is None or not path.is_file():
            continue
        split = "test" if int(match.group(3)) < TEST_TAKES else "train"
        found[split][int(match.group(1))].append(path.relative_to(fsdd).as_posix())
    return found


def _select_images(
    name: str, pool: tuple[list[str], np.ndarray, np.ndarray, np.ndarray], cap: int | None, rng: np.random.Generator
) -> _Split:
    """The split's images in a seeded random order, capped to a class-balanced subset when asked."""
    source, index, label, pixels = pool
    order = rng.permutation(len(label))
    if cap is not None and cap < len(order):
        ranks = np.zeros(len(order), dtype=np.int64)
        seen = np.zeros(10, dtype=np.int64)
        for position, row in enumerate(order):
            ranks[position] = seen[label[row]]
            seen[label[row]] += 1
        keep = np.sort(np.lexsort((np.arange(len(order)), ranks))[:cap])
        order = order[keep]
    return _Split(
        name=name,
        source=[source[i] for i in order],
        index=np.asarray(index)[order].astype(np.int64),
        label=np.asarray(label)[order].astype(np.int64),
        pixels=np.asarray(pixels)[order],
    )


def _pca_degrade(splits: dict[str, _Split], energy: float) -> tuple[int, float]:
    """Fit PCA on the train images, keep the fewest components reaching ``energy``, reconstruct every image."""
    train = splits["train"].pixels.astype(np.float64)
    mean = train.mean(axis=0)
    centered = train - mean
    values, vectors = np.linalg.eigh(centered.T @ centered / len(train))
    values = np.clip(values[::-1], 0.0, None)
    vectors = vectors[:, ::-1]
    ratio = np.cumsum(values) / values.sum()
    components = min(int(np.searchsorted(ratio, energy - 1e-12)) + 1, len(values))
    basis = vectors[:, :components]
    for split in splits.values():
        centered = split.pixels.astype(np.float64) - mean
        rebuilt = centered @ basis @ basis.T + mean
        split.pixels = np.clip(np.rint(rebuilt), 0, 255).astype(np.uint8)
    return components, float(ratio[components - 1])


def _load_speech(path: Path, length: int) -> tuple[np.ndarray, float]:
    """A recording at 8 kHz, center-cropped to at most ``length`` samples, and its mean-square power."""
    wave, rate = read_wav(path)
    if rate != SAMPLE_RATE:
        wave = resample(wave, rate, SAMPLE_RATE)
    if len(wave) > length:
        start = (len(wave) - length) // 2
        wave = wave[start : start + length]
    return wave, float(np.mean(wave.astype(np.float64) ** 2))


def _pair_recordings(
    split: _Split,
    recordings: dict[int, list[str]],
    fsdd: Path,
    length: int,
    speech: dict[str, tuple[np.ndarray, float]],
    skipped: list[dict[str, str]],
    rng: np.random.Generator,
) -> None:
    """Give each image a same-digit recording of its split, cycling through a seeded order; read only what is used."""
    split.fsdd = [""] * len(split.label)
    for digit in range(10):
        rows = np.flatnonzero(split.label == digit)
        if len(rows) == 0:
            continue
        names = recordings[digit]
        usable: list[str] = []
        for position in rng.permutation(len(names)):
            if len(usable) == len(rows):
                break
            name = names[position]
            if name not in speech:
                try:
                    speech[name] = _load_speech(fsdd / name, length)
                except G2DError as error:
                    warn(f"skipping FSDD recording: {error}")
                    skipped.append({"kind": "fsdd", "file": name, "reason": str(error)})
                    continue
            usable.append(name)
        if not usable:
            raise G2DError(f"{fsdd}: no readable {split.name} recordings of digit {digit}")
        for count, row in enumerate(rows):
            split.fsdd[row] = usable[count % len(usable)]


def _load_noise(path: Path) -> np.ndarray:
    """A noise file without its runs of digital silence (editing padding, not sound), resampled to 8 kHz."""
    wave, rate = read_wav(path)
    silent = (wave == 0.0).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], silent, [0]])))
    keep = np.ones(len(wave), dtype=bool)
    for start, stop in zip(edges[0::2], edges[1::2]):
        if stop - start >= SILENCE_RUN_S * rate:
            keep[start:stop] = False
    if not keep.any():
        raise G2DError(f"{path}: noise file is silent")
    wave = wave[keep]
    return resample(wave, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else wave


def _noise_segment(wave: np.ndarray, offset: int, length: int) -> np.ndarray:
    """``length`` samples of noise from ``offset``, tiling the noise when it is shorter than that."""
    if len(wave) >= length:
        return wave[offset : offset + length]
    return np.resize(np.roll(wave, -offset), length)


def _pair_noise(
    split: _Split,
    files: list[Path],
    folder: Path,
    length: int,
    snr_db: float,
    speech: dict[str, tuple[np.ndarray, float]],
    cache: dict[int, np.ndarray | None],
    skipped: list[dict[str, str]],
    rng: np.random.Generator,
) -> None:
    """Draw a noise file, offset and gain per pair; unreadable or silent noise files are skipped and redrawn."""
    count = len(split.label)
    split.noise = np.zeros(count, dtype=np.int64)
    split.offset = np.zeros(count, dtype=np.int64)
    split.gain = np.zeros(count, dtype=np.float64)
    for row in range(count):
        for _ in range(MAX_NOISE_DRAWS):
            choice = int(rng.integers(len(files)))
            if choice not in cache:
                try:
                    cache[choice] = _load_noise(files[choice])
                except G2DError as error:
                    warn(f"skipping noise file: {error}")
                    name = files[choice].relative_to(folder).as_posix()
                    skipped.append({"kind": "noise", "file": name, "reason": str(error)})
                    cache[choice] = None
            wave = cache[choice]
            if wave is None:
                if all(cache.get(i, 0) is None for i in range(len(files))):
                    raise G2DError(f"{folder}: no readable, non-silent noise .wav files")
                continue
            offset = int(rng.integers(len(wave) - length + 1)) if len(wave) >= length else int(rng.integers(len(wave)))
            segment = _noise_segment(wave, offset, length).astype(np.float64)
            noise_power = float(np.mean(segment**2))
            if noise_power > 1e-12:
                split.noise[row], split.offset[row] = choice, offset
                split.gain[row] = noise_gain(speech[split.fsdd[row]][1], noise_power, snr_db)
                break
        else:
            raise G2DError(f"{folder}: found no non-silent noise segment in {MAX_NOISE_DRAWS} draws")


@dataclass
class _Mixer:
    """Everything needed to turn a pair into its noisy wave and log spectrogram."""

    speech: dict[str, tuple[np.ndarray, float]]
    noise: dict[int, np.ndarray | None]
    length: int
    hop: int

    def waves(self, split: _Split, rows: np.ndarray) -> np.ndarray:
        """The noisy waves of the given rows: centered speech plus its scaled noise segment."""
        waves = np.zeros((len(rows), self.length), dtype=np.float32)
        for i, row in enumerate(rows):
            clip = self.speech[split.fsdd[row]][0]
            start = (self.length - len(clip)) // 2
            waves[i, start : start + len(clip)] = clip
            segment = _noise_segment(self.noise[split.noise[row]], int(split.offset[row]), self.length)
            waves[i] += split.gain[row] * segment
        return waves

    def spectrograms(self, split: _Split, rows: np.ndarray) -> np.ndarray:
        """Log-magnitude spectrograms [n, 112, 112] of the given rows, computed in one batched STFT."""
        return log_spectrogram(torch.from_numpy(self.waves(split, rows)), N_FFT, self.hop).numpy()


def _spectrogram_range(train: _Split, mixer: _Mixer, rng: np.random.Generator) -> tuple[float, float, int]:
    """The uint8 mapping range: percentiles of log magnitudes over a seeded sample of train spectrograms."""
    rows = np.sort(rng.permutation(len(train.label))[:RANGE_SAMPLE])
    batches = [mixer.spectrograms(train, rows[i : i + BATCH]).ravel() for i in range(0, len(rows), BATCH)]
    low, high = np.percentile(np.concatenate(batches), RANGE_PERCENTILES)
    if not high > low:
        raise G2DError("spectrogram range is empty: the train spectrograms are constant")
    return float(low), float(high), int(len(rows))


def _write_spectrograms(path: Path, split: _Split, mixer: _Mixer, low: float, high: float) -> None:
    """Write the split's uint8 spectrograms batch by batch into a .npy file, never holding them all as floats."""
    count = len(split.label)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, SPEC_SIZE, SPEC_SIZE))
    for start in range(0, count, BATCH):
        rows = np.arange(start, min(start + BATCH, count))
        logs = mixer.spectrograms(split, rows)
        array[rows] = np.rint(255.0 * np.clip((logs - low) / (high - low), 0.0, 1.0)).astype(np.uint8)
    array.flush()
    del array


def _write_sources(path: Path, splits: dict[str, _Split], files: list[Path], folder: Path) -> None:
    """Write one CSV row per pair naming the recording, image and noise it was built from."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SOURCES_COLUMNS)
        for name in ("train", "test"):
            split = splits[name]
            for row in range(len(split.label)):
                writer.writerow(
                    [
                        name,
                        row,
                        int(split.label[row]),
                        split.fsdd[row],
                        split.source[row],
                        int(split.index[row]),
                        files[split.noise[row]].relative_to(folder).as_posix(),
                        int(split.offset[row]),
                    ]
                )


def avdigits_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fsdd", type=Path, required=True, help="folder of FSDD recordings/*.wav")
    parser.add_argument("--mnist", type=Path, required=True, help="folder with t10k-*-ubyte.gz and mnist_5k.csv.gz")
    parser.add_argument("--noise", type=Path, required=True, help="folder of noise wavs (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--snr-db", type=float, default=None, help="speech-to-noise ratio in dB")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--test-images", type=int, default=None, help="first t10k images kept for test (3000)")
    parser.add_argument("--max-train", type=int, default=None, help="at most this many train pairs (all)")
    parser.add_argument("--max-test", type=int, default=None, help="at most this many test pairs (all)")


def run_avdigits(args: argparse.Namespace) -> dict:
    options = {"seed": args.seed, "overwrite": args.overwrite}
    for name in ("snr_db", "test_images", "max_train", "max_test"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    return prepare_avdigits(args.fsdd, args.mnist, args.noise, args.out, **options)


def describe_avdigits(args: argparse.Namespace, summary: dict) -> str:
    counts = summary["counts"]
    return (f"avdigits written to {args.out}: {counts['train']['pairs']} train and {counts['test']['pairs']} test "
            f"pairs, audio at {summary['audio']['snr_db']} dB SNR, images from "
            f"{summary['image']['pca_components']} PCA components")


DATASETS.register(
    "avdigits", task="classification", Options=AVMNISTOptions,
    root="the folder written by g2d prepare avdigits (image/, audio/ and *_labels.npy)",
    prepare=PrepareCommand("AV-MNIST-format data from FSDD, MNIST and noise wavs", avdigits_arguments, run_avdigits,
                           describe_avdigits))(load_avmnist_layout)
