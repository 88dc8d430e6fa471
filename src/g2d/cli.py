"""The ``g2d`` command: parse arguments, load the config, call the library; no logic of its own."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

from g2d.errors import G2DError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="g2d", description="Balanced multimodal learning with G²D.")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="run one experiment from a YAML config")
    train.add_argument("config", type=Path, help="experiment YAML file, or a packaged config's name (g2d configs)")
    train.add_argument("overrides", nargs="*", default=[], help="dotted key=value overrides, e.g. optim.lr=0.01 out=runs/x")
    train.add_argument("--reference", action="store_true",
                       help="fp32, eager, no caches: the path the fast one is checked against (trainer.reference=true)")

    demo = commands.add_parser("demo", help="teachers, Joint-Train and G²D on the embedded mfeat data")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for the run folders")
    demo.add_argument("overrides", nargs="*", default=[], help="dotted key=value overrides for every run")

    analyze = commands.add_parser("analyze", help="the paper's analyses and robustness tests of a finished run")
    analyze.add_argument("run_dir", type=Path, help="run folder (with config.yaml, metrics.json, checkpoints/)")
    analyze.add_argument("--device", default="cpu", help="torch device (default cpu)")
    analyze.add_argument("--seed", type=int, default=0, help="seed of the noise, point sample and t-SNE (default 0)")
    analyze.add_argument("--overwrite", action="store_true", help="replace an existing RUN_DIR/analysis")

    report = commands.add_parser("report", help="an HTML page, PNG figures and a Markdown table comparing runs")
    report.add_argument("run_dirs", type=Path, nargs="+", help="run folders (runs differing only in seed are grouped)")
    report.add_argument("--out", type=Path, required=True, help="output folder")
    report.add_argument("--overwrite", action="store_true", help="replace the report in a non-empty --out")

    sweep = commands.add_parser("sweep", help="one config over a grid of overrides and seeds, with a mean ± std table")
    sweep.add_argument("config", type=Path, help="experiment YAML file, or a packaged config's name (g2d configs)")
    sweep.add_argument("overrides", nargs="*", default=[], help="dotted key=value overrides for every run (before the options)")
    sweep.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of every configuration (default 0)")
    sweep.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2",
                       help="values to cross, e.g. method.name=joint,g2d smp.enabled=true,false")
    sweep.add_argument("--out", type=Path, required=True, help="sweep folder: <configuration>/seed<s>/, teachers/, sweep.md|csv|json")
    sweep.add_argument("--workers", type=int, default=1, help="experiments run at a time, each in its own process")
    sweep.add_argument("--print-commands", action="store_true",
                       help="print one g2d train command per run (for a job array) instead of running")
    sweep.add_argument("--teachers-only", action="store_true", help="train the shared teachers and stop")

    tune = commands.add_parser("tune", help="search keys for the best validation score with Optuna (g2d[tune])")
    tune.add_argument("config", type=Path, help="experiment YAML file, or a packaged config's name (g2d configs)")
    tune.add_argument("overrides", nargs="*", help="dotted key=value overrides for every trial (before the options)")
    tune.add_argument("--space", nargs="+", required=True, metavar="KEY=SPEC",
                      help="searched keys: LOW:HIGH, LOW:HIGH:log, [LOW:HIGH,...] (a list) or choice1,choice2")
    tune.add_argument("--trials", type=int, required=True, help="trials in the study, all processes together")
    tune.add_argument("--out", type=Path, required=True, help="tune folder: trials/, teachers/, tune.md, best.yaml")
    tune.add_argument("--storage", help="Optuna storage URL (default sqlite:///OUT/study.db; postgresql://... for many machines)")
    tune.add_argument("--study", help="study name (default: OUT's folder name)")
    tune.add_argument("--prune", choices=["median", "hyperband", "none"], default="median",
                      help="stop trials whose validation score lags (default median)")
    tune.add_argument("--workers", type=int, default=1, help="trials run at a time, each in its own process")
    tune.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of every trial; its value is their mean")
    tune.add_argument("--heartbeat", type=int, default=30,
                      help="seconds between a trial's heartbeats; one silent for two is failed and retried (default 30)")

    commands.add_parser("configs", help="list the configs shipped in the package, by the name g2d train takes")

    config = commands.add_parser("config", help="check CONFIG and overrides as g2d train does, then print the resolved YAML")
    config.add_argument("config", type=Path, help="experiment YAML file, or a packaged config's name (g2d configs)")
    config.add_argument("overrides", nargs="*", default=[], help="dotted key=value overrides")

    from g2d.data import prepare_commands

    prepare = commands.add_parser("prepare", help="build a dataset from raw files")
    datasets = prepare.add_subparsers(dest="dataset", required=True)
    for name, command in prepare_commands().items():
        command.add_arguments(datasets.add_parser(name, help=command.help))
    return parser


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
        print_error(str(exc), exc)
        return 2
    except OSError as exc:  # a read-only or full disk, a file where a folder belongs: name the path
        if args.debug:
            raise
        print_error(describe_os_error(exc), exc)
        return 2
    except KeyboardInterrupt:
        hint = INTERRUPTED_HINTS.get(args.command)
        print("g2d: interrupted" + (f"; completed epochs are checkpointed ({hint})" if hint else ""), file=sys.stderr)
        return 130


# How each command continues after Ctrl-C: a run resumes by flag; sweeps, tunes and the demo by running again.
INTERRUPTED_HINTS = {
    "train": "resume with trainer.resume=true",
    "sweep": "run the same command again to continue",
    "tune": "run the same command again to continue; the interrupted trial is retried",
    "demo": "run the same command again to continue",
}


def print_error(message: str, error: BaseException) -> None:
    """The one ``g2d: error:`` line; under torchrun the ranks but 0 hold theirs back (``defer_to_rank_zero``)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        from g2d.training.distributed import defer_to_rank_zero

        defer_to_rank_zero(error)
    print(f"g2d: error: {message}", file=sys.stderr, flush=True)


def describe_os_error(exc: OSError) -> str:
    """One line naming the file and the system's reason, e.g. ``RUN/metrics.json: no space left on device``."""
    reason = (exc.strerror or str(exc)).lower()
    return f"{exc.filename}: {reason}" if exc.filename else reason


def dispatch(args: argparse.Namespace) -> int:
    return COMMANDS[args.command](args)


def train(args: argparse.Namespace) -> int:
    from g2d.config import load_config
    from g2d.results.tables import results_table
    from g2d.runs.experiment import run
    from g2d.training import distributed

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


def list_configs(args: argparse.Namespace) -> int:
    from g2d.config import packaged_configs

    print("\n".join(packaged_configs()))
    return 0


def show_config(args: argparse.Namespace) -> int:
    from g2d.config import load_config, to_yaml
    from g2d.runs.check import preflight

    config = load_config(args.config, args.overrides)
    preflight(config)  # refuses what g2d train would refuse before loading any data
    print(to_yaml(config), end="")
    return 0


def sweep(args: argparse.Namespace) -> int:
    from g2d.runs.sweep import commands, grid_points, run_sweep

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


def tune(args: argparse.Namespace) -> int:
    from g2d.runs.tune import TuneOptions, tune as run_tune

    summary = run_tune(TuneOptions(args.config, args.overrides, args.space, args.trials, args.out, args.storage,
                                   args.study, args.prune, args.seeds, args.workers, args.heartbeat),
                       log=lambda line: print(line, flush=True))
    print((args.out / "tune.md").read_text(), end="")
    print(f"best config: {args.out / 'best.yaml'}; retrain it on the test split: {summary['retrain']}")
    return 0


def demo(args: argparse.Namespace) -> int:
    from g2d.runs.demo import demo as run_demo

    print(run_demo(args.out, args.overrides))
    print(f"run folders: {args.out}")
    return 0


def prepare(args: argparse.Namespace) -> int:
    from g2d.data import prepare_commands

    command = prepare_commands()[args.dataset]
    print(command.describe(args, command.run(args)))
    return 0


def analyze(args: argparse.Namespace) -> int:
    from g2d.results.analysis import analyze_run, summary_lines
    from g2d.training.tracking import attach_files

    result = analyze_run(args.run_dir, overwrite=args.overwrite, device=args.device, seed=args.seed)
    written = sorted(p for p in (args.run_dir / "analysis").iterdir() if not p.name.startswith("."))  # no markers
    attach_files(args.run_dir, written, "analysis")
    print("\n".join(summary_lines(result)))
    print(f"analysis written to {args.run_dir / 'analysis'}")
    return 0


def report(args: argparse.Namespace) -> int:
    from g2d.results.report import write_report
    from g2d.runs.tune import tune_runs
    from g2d.training.tracking import attach_files

    args.run_dirs = [run for folder in args.run_dirs for run in tune_runs(folder)]  # a tune folder: its trials
    page = write_report(args.run_dirs, args.out, overwrite=args.overwrite)
    for run_dir in args.run_dirs:
        attach_files(run_dir, sorted(p for p in args.out.iterdir() if p.is_file() and not p.name.startswith(".")), "report")
    print(f"report written to {page}")
    return 0


COMMANDS = {"train": train, "sweep": sweep, "tune": tune, "demo": demo, "prepare": prepare, "analyze": analyze, "report": report,
            "configs": list_configs, "config": show_config}


if __name__ == "__main__":
    sys.exit(main())
