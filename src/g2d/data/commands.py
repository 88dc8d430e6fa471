"""The ``g2d prepare NAME`` commands: each dataset's command-line options and the function it calls.

A dataset's record (``g2d.data.base.DatasetRecord``) holds its command, defined in the
dataset's own module with the helpers below; the CLI builds its subcommands from the records.
A command knows its options (``add_arguments``), how to call its dataset's ``prepare_*``
function (``run``) and the line it prints when done (``describe``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class PrepareCommand:
    """One ``g2d prepare`` subcommand."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict]
    describe: Callable[[argparse.Namespace, dict], str]


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
