"""The ``g2d prepare NAME`` commands: each dataset's command-line options and the function it calls.

``PREPARE`` is the registry the CLI builds its subcommands from. An entry knows its options
(``add_arguments``), how to call its dataset's ``prepare_*`` function (``run``) and the line
it prints when done (``describe``). Dataset modules are imported only when their command runs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from g2d.registry import Registry


@dataclass(frozen=True)
class PrepareCommand:
    """One ``g2d prepare`` subcommand."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict]
    describe: Callable[[argparse.Namespace, dict], str]


PREPARE: Registry[PrepareCommand] = Registry("dataset to prepare", "g2d prepare")


def common_arguments(parser: argparse.ArgumentParser, root_help: str) -> None:
    parser.add_argument("--root", type=Path, required=True, help=root_help)
    parser.add_argument("--out", type=Path, required=True, help="output folder (built aside, then renamed into place)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def media_arguments(parser: argparse.ArgumentParser, frames: int) -> None:
    parser.add_argument("--fps", type=float, default=1.0, help="frames sampled per second of video (default 1)")
    parser.add_argument("--frames", type=int, default=frames, help=f"frames kept per clip (default {frames})")
    parser.add_argument("--size", type=int, default=224, help="frame side in pixels (default 224)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="stratified part of train held out (0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation carve (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes (output is the same for any)")


def common(args: argparse.Namespace) -> dict:
    return {"root": args.root, "out": args.out, "overwrite": args.overwrite}


def media(args: argparse.Namespace) -> dict:
    return {"fps": args.fps, "frames": args.frames, "size": args.size, "val_fraction": args.val_fraction,
            "seed": args.seed, "workers": args.workers}


def describe_splits(args: argparse.Namespace, summary: dict) -> str:
    sizes = ", ".join(f"{count} {split}" for split, count in summary["splits"].items())
    return (f"{args.dataset} written to {args.out}: {sizes}; {summary['skipped']['total']} items skipped "
            "(listed in skipped.csv)")


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
    from g2d.data.avdigits import prepare_avdigits

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


def cremad_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "CREMA-D folder with AudioWAV/ and VideoFlash/")
    parser.add_argument("--split-dir", type=Path, default=None, help="folder of train.csv and test.csv (default: --root)")
    media_arguments(parser, frames=1)


def run_cremad(args: argparse.Namespace) -> dict:
    from g2d.data.cremad import prepare_cremad

    return prepare_cremad(split_dir=args.split_dir, **media(args), **common(args))


def vggsound_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "folder of downloaded clips (searched recursively)")
    parser.add_argument("--csv", type=Path, default=None, help="the published vggsound.csv (default: ROOT/vggsound.csv)")
    parser.add_argument("--name-format", default="{id}_{start:06d}.mp4", help="clip file name (fields id, start, end)")
    media_arguments(parser, frames=3)


def run_vggsound(args: argparse.Namespace) -> dict:
    from g2d.data.vggsound import prepare_vggsound

    return prepare_vggsound(csv_path=args.csv, name_format=args.name_format, **media(args), **common(args))


def avmnist_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "the AV-MNIST folder")
    parser.add_argument("--val-rows", type=int, default=5000, help="last training rows held out for validation")


def run_avmnist(args: argparse.Namespace) -> dict:
    from g2d.data.avmnist import prepare_avmnist

    return prepare_avmnist(val_rows=args.val_rows, **common(args))


def affect_arguments(file_name: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        common_arguments(parser, f"{file_name} or the folder holding it")
        parser.add_argument("--trust-pickle", action="store_true", help="allow reading the pickle (only numpy content)")
        parser.add_argument("--max-len", type=int, default=50, help="time steps kept per sequence (default 50)")
        parser.add_argument("--unaligned", action="store_true", help="each modality starts at its own first step")

    return add


def run_affect(args: argparse.Namespace) -> dict:
    from g2d.data.affect import prepare_affect

    return prepare_affect(args.dataset, trust_pickle=args.trust_pickle, max_len=args.max_len,
                          unaligned=args.unaligned, **common(args))


def misme_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "folder with {train,val,test}.csv")
    parser.add_argument("--images", type=Path, default=None, help="image folder (default: ROOT/images)")
    parser.add_argument("--columns", default=None, help="comma-separated meteorological columns (default: MIS-ME's 8)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--workers", type=int, default=1, help="image decoding processes")


def run_misme(args: argparse.Namespace) -> dict:
    from g2d.data.misme import COLUMNS, prepare_misme

    columns = tuple(c.strip() for c in args.columns.split(",")) if args.columns else COLUMNS
    return prepare_misme(images=args.images, columns=columns, size=args.size, workers=args.workers, **common(args))


for _name, _command in (
    ("avdigits", PrepareCommand("AV-MNIST-format data from FSDD, MNIST and noise wavs",
                                avdigits_arguments, run_avdigits, describe_avdigits)),
    ("cremad", PrepareCommand("CREMA-D from AudioWAV/ and VideoFlash/", cremad_arguments, run_cremad, describe_splits)),
    ("vggsound", PrepareCommand("VGGSound from the CSV and downloaded clips", vggsound_arguments, run_vggsound,
                                describe_splits)),
    ("avmnist", PrepareCommand("AV-MNIST .npy folder with MultiBench's 55k/5k/10k split", avmnist_arguments,
                               run_avmnist, describe_splits)),
    ("urfunny", PrepareCommand("urfunny from a MultiBench/MulT feature pickle", affect_arguments("humor.pkl"),
                               run_affect, describe_splits)),
    ("iemocap", PrepareCommand("iemocap from a MultiBench/MulT feature pickle", affect_arguments("iemocap_data.pkl"),
                               run_affect, describe_splits)),
    ("misme", PrepareCommand("MIS-ME soil images and meteorological tables", misme_arguments, run_misme,
                             describe_splits)),
):
    PREPARE.register(_name)(_command)
