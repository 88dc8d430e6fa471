"""The ``g2d`` command: parse arguments, load the config, call the library; no logic of its own."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from typing import Iterator
from pathlib import Path

from g2d.errors import G2DError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="g2d", description="Balanced multimodal learning with G²D.")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="run one experiment from a YAML config")
    train.add_argument("config", type=Path, help="experiment YAML file")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=0.01 out=runs/x")
    train.add_argument("--reference", action="store_true",
                       help="fp32, eager, no caches: the path the fast one is checked against (trainer.reference=true)")

    demo = commands.add_parser("demo", help="teachers, Joint-Train and G²D on the embedded mfeat data")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for the run folders")
    demo.add_argument("overrides", nargs="*", help="dotted key=value overrides for every run")

    sweep = commands.add_parser("sweep", help="one config over a grid of overrides and seeds, with a mean ± std table")
    sweep.add_argument("config", type=Path, help="experiment YAML file")
    sweep.add_argument("overrides", nargs="*", help="dotted key=value overrides for every run (before the options)")
    sweep.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of every configuration (default 0)")
    sweep.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2",
                       help="values to cross, e.g. method.name=joint,g2d smp.enabled=true,false")
    sweep.add_argument("--out", type=Path, required=True, help="sweep folder: <configuration>/seed<s>/, teachers/, sweep.md|csv|json")
    sweep.add_argument("--workers", type=int, default=1, help="experiments run at a time, each in its own process")
    sweep.add_argument("--print-commands", action="store_true",
                       help="print one g2d train command per run (for a job array) instead of running")
    sweep.add_argument("--teachers-only", action="store_true", help="train the shared teachers and stop")

    prepare = commands.add_parser("prepare", help="build a dataset from raw files")
    datasets = prepare.add_subparsers(dest="dataset", required=True)
    avdigits = datasets.add_parser("avdigits", help="AV-MNIST-format data from FSDD, MNIST and noise wavs")
    avdigits.add_argument("--fsdd", type=Path, required=True, help="folder of FSDD recordings/*.wav")
    avdigits.add_argument("--mnist", type=Path, required=True, help="folder with t10k-*-ubyte.gz and mnist_5k.csv.gz")
    avdigits.add_argument("--noise", type=Path, required=True, help="folder of noise wavs (searched recursively)")
    avdigits.add_argument("--out", type=Path, required=True, help="output folder")
    avdigits.add_argument("--seed", type=int, default=0)
    avdigits.add_argument("--snr-db", type=float, default=None, help="speech-to-noise ratio in dB")
    avdigits.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_prepare_commands(datasets)
    return parser


def add_prepare_commands(datasets: argparse._SubParsersAction) -> None:
    """``g2d prepare NAME --root RAW --out DIR [options]`` for the paper's datasets (docs/datasets.md)."""

    def command(name: str, help_text: str, root_help: str) -> argparse.ArgumentParser:
        sub = datasets.add_parser(name, help=help_text)
        sub.add_argument("--root", type=Path, required=True, help=root_help)
        sub.add_argument("--out", type=Path, required=True, help="output folder (built aside, then renamed into place)")
        sub.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
        return sub

    def media_options(sub: argparse.ArgumentParser, frames: int) -> None:
        sub.add_argument("--fps", type=float, default=1.0, help="frames sampled per second of video (default 1)")
        sub.add_argument("--frames", type=int, default=frames, help=f"frames kept per clip (default {frames})")
        sub.add_argument("--size", type=int, default=224, help="frame side in pixels (default 224)")
        sub.add_argument("--val-fraction", type=float, default=0.1, help="stratified part of train held out (0.1)")
        sub.add_argument("--seed", type=int, default=0, help="seed of the validation carve (default 0)")
        sub.add_argument("--workers", type=int, default=1, help="decoding processes (output is the same for any)")

    cremad = command("cremad", "CREMA-D from AudioWAV/ and VideoFlash/", "CREMA-D folder with AudioWAV/ and VideoFlash/")
    cremad.add_argument("--split-dir", type=Path, default=None, help="folder of train.csv and test.csv (default: --root)")
    media_options(cremad, frames=1)

    vggsound = command("vggsound", "VGGSound from the CSV and downloaded clips", "folder of downloaded clips (searched recursively)")
    vggsound.add_argument("--csv", type=Path, default=None, help="the published vggsound.csv (default: ROOT/vggsound.csv)")
    vggsound.add_argument("--name-format", default="{id}_{start:06d}.mp4", help="clip file name (fields id, start, end)")
    media_options(vggsound, frames=3)

    avmnist = command("avmnist", "AV-MNIST .npy folder with MultiBench's 55k/5k/10k split", "the AV-MNIST folder")
    avmnist.add_argument("--val-rows", type=int, default=5000, help="last training rows held out for validation")

    for name, file_name in (("urfunny", "humor.pkl"), ("iemocap", "iemocap_data.pkl")):
        affect = command(name, f"{name} from a MultiBench/MulT feature pickle", f"{file_name} or the folder holding it")
        affect.add_argument("--trust-pickle", action="store_true", help="allow reading the pickle (only numpy content)")
        affect.add_argument("--max-len", type=int, default=50, help="time steps kept per sequence (default 50)")
        affect.add_argument("--unaligned", action="store_true", help="each modality starts at its own first step")

    misme = command("misme", "MIS-ME soil images and meteorological tables", "folder with {train,val,test}.csv")
    misme.add_argument("--images", type=Path, default=None, help="image folder (default: ROOT/images)")
    misme.add_argument("--columns", default=None, help="comma-separated meteorological columns (default: MIS-ME's 8)")
    misme.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    misme.add_argument("--workers", type=int, default=1, help="image decoding processes")


@contextlib.contextmanager
def library_messages() -> Iterator[None]:
    """Print the library's log lines (which training path runs, why a fast feature is off) while a command runs."""
    logger = logging.getLogger("g2d")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("g2d: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides after an option (train CONFIG --reference k=v) are left over by argparse.
    if extra and (args.command != "train" or not all("=" in item for item in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        with library_messages():
            return dispatch(args)
    except G2DError as exc:
        if args.debug:
            raise
        print(f"g2d: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("g2d: interrupted; completed epochs are checkpointed (resume with trainer.resume=true)", file=sys.stderr)
        return 130


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "train":
        from g2d.config import load_config
        from g2d.experiment import run
        from g2d.report import results_table

        from g2d import distributed

        overrides = [*args.overrides, "trainer.reference=true"] if args.reference else args.overrides
        config = load_config(args.config, overrides)
        with distributed.lost_contact_reported(config.run_dir()):
            metrics = run(config)
        main = distributed.is_main()  # only rank 0 prints the table
        distributed.teardown()
        if main:
            print(results_table({metrics["method"]: metrics}))
            print(f"run folder: {config.run_dir()}")
        return 0
    if args.command == "sweep":
        from g2d.sweep import commands, grid_points, run_sweep

        points = grid_points(args.grid)
        if args.print_commands:
            print("\n".join(commands(args.config, args.overrides, points, args.seeds, args.out, args.grid)))
            return 0
        run_sweep(args.config, args.overrides, points, args.seeds, args.out, workers=args.workers,
                  teachers_only=args.teachers_only, log=lambda line: print(line, flush=True))
        if not args.teachers_only:
            print((args.out / "sweep.md").read_text(), end="")
            print(f"tables: {args.out / 'sweep.md'}, {args.out / 'sweep.csv'}, {args.out / 'sweep.json'}")
        return 0
    if args.command == "demo":
        from g2d.demo import demo

        print(demo(args.out, args.overrides))
        print(f"run folders: {args.out}")
        return 0
    if args.command == "prepare" and args.dataset != "avdigits":
        summary = prepare(args)
        skipped = summary["skipped"]["total"]
        sizes = ", ".join(f"{count} {split}" for split, count in summary["splits"].items())
        print(f"{args.dataset} written to {args.out}: {sizes}; {skipped} items skipped (listed in skipped.csv)")
        return 0
    if args.command == "prepare":
        from g2d.data.avdigits import prepare_avdigits

        options = {"seed": args.seed, "overwrite": args.overwrite}
        if args.snr_db is not None:
            options["snr_db"] = args.snr_db
        summary = prepare_avdigits(args.fsdd, args.mnist, args.noise, args.out, **options)
        counts = summary["counts"]
        print(f"avdigits written to {args.out}: {counts['train']['pairs']} train and {counts['test']['pairs']} test "
              f"pairs, audio at {summary['audio']['snr_db']} dB SNR, images from "
              f"{summary['image']['pca_components']} PCA components")
        return 0
    raise AssertionError(args.command)


def prepare(args: argparse.Namespace) -> dict:
    """Call the chosen dataset's prepare function with the command line's options."""
    common = {"root": args.root, "out": args.out, "overwrite": args.overwrite}
    if args.dataset in ("cremad", "vggsound"):
        media = {"fps": args.fps, "frames": args.frames, "size": args.size, "val_fraction": args.val_fraction,
                 "seed": args.seed, "workers": args.workers}
        if args.dataset == "cremad":
            from g2d.data.cremad import prepare_cremad

            return prepare_cremad(split_dir=args.split_dir, **media, **common)
        from g2d.data.vggsound import prepare_vggsound

        return prepare_vggsound(csv_path=args.csv, name_format=args.name_format, **media, **common)
    if args.dataset == "avmnist":
        from g2d.data.avmnist import prepare_avmnist

        return prepare_avmnist(val_rows=args.val_rows, **common)
    if args.dataset in ("urfunny", "iemocap"):
        from g2d.data.affect import prepare_affect

        return prepare_affect(args.dataset, trust_pickle=args.trust_pickle, max_len=args.max_len,
                              unaligned=args.unaligned, **common)
    if args.dataset == "misme":
        from g2d.data.misme import COLUMNS, prepare_misme

        columns = tuple(c.strip() for c in args.columns.split(",")) if args.columns else COLUMNS
        return prepare_misme(images=args.images, columns=columns, size=args.size, workers=args.workers, **common)
    raise AssertionError(args.dataset)


if __name__ == "__main__":
    sys.exit(main())
