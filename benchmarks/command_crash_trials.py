"""Kill -9 trials of ``g2d analyze``, ``report``, ``sweep`` and ``prepare``: kill, run again, compare.

Each trial starts the command in a child process (forked from a forkserver that has imported
torch and g2d), kills it (at a named ``g2d.faults`` point, or by the parent's SIGKILL after a
random delay within one uninterrupted child's run time), runs the same command again in this
process and compares its output with an uninterrupted run's: analyze, report and prepare byte
for byte (the ``.g2d.json`` marker, which holds the command line, left out), sweep by its table
(``sweep.md`` without the wall-clock column). It also counts what was left beside or inside the
output (hidden ``.NAME.tmp-*``/``.old-*`` folders, ``*.tmp`` files). Counted, not estimated:

    nice -n 10 .venv/bin/python benchmarks/command_crash_trials.py --out runs/command_crash_trials --random 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from g2d.cli import main

CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(["g2d.cli", "g2d.runs.experiment", "g2d.results.analysis", "g2d.results.report",
                                "g2d.runs.sweep", "g2d.data.avdigits"])

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "mfeat.yaml")
SETTINGS = ["dataset.modalities=[pix,mor]", "model.encoder.hidden=[16]", "trainer.epochs=2", "trainer.batch_size=64",
            "trainer.progress=false", "optim.lr=0.05", "method.name=joint", "smp.enabled=false"]
SWAP_POINTS = ["folders.built:1", "folders.swap:1"]
MARKER = ".g2d.json"


def child(args: list[str], point: str | None) -> None:
    """One command; with ``point`` it SIGKILLs itself there (``g2d.faults``)."""
    if point:
        os.environ["G2D_TEST_KILL_AT"] = point
    sys.stdout = open(os.devnull, "w")
    sys.stderr = open(os.devnull, "w")
    sys.exit(main(args))


def start(args: list[str], point: str | None = None) -> multiprocessing.Process:
    process = CONTEXT.Process(target=child, args=(args, point))
    process.start()
    return process


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes, the marker left out."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER}


def sweep_table(folder: Path) -> list[str]:
    return [line.rsplit("|", 2)[0] for line in (folder / "sweep.md").read_text().splitlines()]


def leftovers(out: Path) -> list[str]:
    """Hidden siblings a build left beside ``out``, and temporary files inside it."""
    beside = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    inside = [p.name for p in out.rglob("*") if p.name.endswith((".tmp", ".new"))] if out.is_dir() else []
    return beside + inside


class Command:
    """One command under trial: its arguments for an output folder and how its outputs are compared."""

    def __init__(self, name: str, arguments: Callable[[Path], list[str]], outcome: Callable[[Path], object],
                 fresh: bool, points: list[str]) -> None:
        self.name, self.arguments, self.outcome, self.fresh, self.points = name, arguments, outcome, fresh, points

    def output(self, folder: Path, index: int) -> Path:
        """A new folder per trial (sweep, which continues rather than replaces) or the one output, replaced."""
        return folder / f"trial{index:03d}" if self.fresh else folder / "out"


def commands(folder: Path) -> list[Command]:
    run = folder / "run"
    sys.path.insert(0, str(ROOT / "tests"))  # the synthetic FSDD / MNIST / noise tree of the avdigits tests
    from test_avdigits import _synthetic_sources

    fsdd, mnist, noise = _synthetic_sources(folder / "sources")
    return [
        Command("analyze", lambda out: ["analyze", str(run), "--overwrite"], files, False, SWAP_POINTS),
        Command("report", lambda out: ["report", str(run), "--out", str(out), "--overwrite"], files, False,
                SWAP_POINTS),
        Command("prepare", lambda out: ["prepare", "avdigits", "--fsdd", str(fsdd), "--mnist", str(mnist), "--noise",
                                        str(noise), "--out", str(out), "--test-images", "20", "--overwrite"],
                files, False, SWAP_POINTS),
        Command("sweep", lambda out: ["sweep", CONFIG, *SETTINGS, "--grid", "optim.lr=0.05,0.1", "--out", str(out)],
                sweep_table, True, ["checkpoint.after_commit:1", "checkpoint.after_commit:3", "atomic_write:9"]),
    ]


def where(command: Command, out: Path, run: Path) -> Path:
    return run / "analysis" if command.name == "analyze" else out


def trials_of(command: Command, folder: Path, run: Path, random_trials: int, rng: random.Random) -> dict:
    reference_out = folder / "reference"
    started = time.perf_counter()
    timed = start(command.arguments(reference_out))
    timed.join()
    assert timed.exitcode == 0, command.name
    duration = time.perf_counter() - started
    reference = command.outcome(where(command, reference_out, run))
    plan = [(point, None) for point in command.points]
    plan += [(None, round(rng.uniform(0.3, duration), 2)) for _ in range(random_trials)]
    results = []
    for index, (point, delay) in enumerate(plan):
        out = command.output(folder, index)
        process = start(command.arguments(out), point)
        process.join(timeout=delay)
        if process.is_alive():
            process.kill()
            process.join()
        killed = process.exitcode == -signal.SIGKILL
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            code = main(command.arguments(out))
        target = where(command, out, run)
        same = code == 0 and command.outcome(target) == reference
        results.append({"command": command.name, "point": point, "delay": delay, "killed": killed,
                        "rerun_exit": code, "identical": same, "leftovers": leftovers(target)})
        print(json.dumps(results[-1]), flush=True)
    killed = [r for r in results if r["killed"]]
    return {"trials": len(results), "killed": len(killed), "identical_after_rerun": sum(r["identical"] for r in killed),
            "finished_before_kill": len(results) - len(killed),
            "identical_when_not_killed": sum(r["identical"] for r in results if not r["killed"]),
            "with_leftovers": sum(bool(r["leftovers"]) for r in results), "child_seconds": round(duration, 1),
            "results": results}


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the trials")
    parser.add_argument("--random", type=int, default=8, help="trials per command killed at a random moment")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random delays")
    parser.add_argument("--only", nargs="*", default=None, help="commands to try (default: all four)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run = args.out / "run"
    if not (run / "metrics.json").is_file():
        assert main(["train", CONFIG, *SETTINGS, f"out={run}"]) == 0
    assert main(["analyze", str(run), "--overwrite"]) == 0  # the report reads the analysis
    warm = start(["--help"])  # the forkserver's own start-up is not a child's run time
    warm.join()
    rng = random.Random(args.seed)
    summary = {}
    for command in commands(args.out):
        if args.only and command.name not in args.only:
            continue
        summary[command.name] = trials_of(command, args.out / command.name, run, args.random, rng)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({name: {k: v for k, v in s.items() if k != "results"} for name, s in summary.items()}, indent=2))


if __name__ == "__main__":
    main_cli()
