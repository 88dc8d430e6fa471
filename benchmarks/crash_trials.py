"""Kill -9 trials: SIGKILL a real ``g2d train`` at checkpoint phases and at random moments, resume, compare.

Each trial starts ``g2d train`` in a child process (forked from a forkserver that has imported
torch and g2d, so a trial does not pay the import), kills it (the child kills itself at a named
fault point, see ``g2d.faults``, or the parent sends SIGKILL after a random delay), resumes the
run with ``trainer.resume=true`` and compares weights (last and best), metrics and history
(wall-clock fields left out) with an uninterrupted run, byte for byte. Counted, not estimated:

    nice -n 10 .venv/bin/python benchmarks/crash_trials.py --out runs/crash_trials --random 30
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path

from g2d.cli import main
from g2d.faults import run_outcome

CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(["g2d.cli", "g2d.runs.experiment"])

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "mfeat.yaml")
EPOCHS = 3
SETTINGS = ["dataset.modalities=[pix,mor]", "model.encoder.hidden=[16]", f"trainer.epochs={EPOCHS}",
            "trainer.batch_size=64", "trainer.progress=false", "optim.lr=0.05", "method.name=g2d",
            "smp.schedule=dynamic", "smp.tau=[1]", "seed=1"]
PHASES = ["checkpoint.begin", "checkpoint.after_weights", "checkpoint.after_best", "checkpoint.after_state",
          "checkpoint.before_commit", "checkpoint.after_commit"]


def arguments(out: Path, teachers: Path, *extra: str) -> list[str]:
    return ["train", CONFIG, *SETTINGS, f"out={out}", f"teachers.root={teachers}", *extra]


def child(args: list[str], point: str | None) -> None:
    """A ``g2d train`` process; with ``point`` it SIGKILLs itself there (``g2d.faults``)."""
    if point:
        os.environ["G2D_TEST_KILL_AT"] = point
    sys.stdout = open(os.devnull, "w")
    sys.exit(main(args))


def start(args: list[str], point: str | None = None) -> multiprocessing.Process:
    process = CONTEXT.Process(target=child, args=(args, point))
    process.start()
    return process


def trial(out: Path, teachers: Path, reference: dict, point: str | None, delay: float | None) -> dict:
    """One kill and resume; what happened to the child and whether the resumed run matched."""
    process = start(arguments(out, teachers), point)
    process.join(timeout=delay)
    if process.is_alive():
        process.kill()
        process.join()
    killed = process.exitcode == -signal.SIGKILL
    code = main(arguments(out, teachers, "trainer.resume=true"))
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith((".tmp", ".new"))]
    same = code == 0 and run_outcome(out) == reference
    return {"point": point, "delay": delay, "killed": killed, "resume_exit": code, "identical": same,
            "leftovers": leftovers}


def run_trials(folder: Path, random_trials: int, seed: int, named: bool = True) -> dict:
    teachers = folder / "teachers"
    assert main(arguments(folder / "reference", teachers)) == 0  # trains the teachers too, once
    warm = start(["--help"])  # the forkserver's own start-up (importing torch) is not a child's run time
    warm.join()
    started = time.perf_counter()
    timed = start(arguments(folder / "timed", teachers))
    timed.join()
    assert timed.exitcode == 0
    duration = time.perf_counter() - started  # one child's whole life, from the fork to its exit
    reference = run_outcome(folder / "reference")
    plan: list[tuple[str | None, float | None]] = [
        (f"{phase}:{epoch}", None) for phase in PHASES for epoch in range(1, EPOCHS + 1)
    ] + [(f"atomic_write:{n}", None) for n in (1, 2, 3)] if named else []
    rng = random.Random(seed)
    # Random moments span a whole child's life: start-up, teachers loading, every epoch, the final writes.
    plan += [(None, round(rng.uniform(0.5, duration), 2)) for _ in range(random_trials)]
    results = []
    for index, (point, delay) in enumerate(plan):
        results.append(trial(folder / f"trial{index:03d}", teachers, reference, point, delay))
        print(json.dumps(results[-1]), flush=True)
    killed = [r for r in results if r["killed"]]
    return {
        "settings": SETTINGS, "trials": len(results), "killed": len(killed),
        "identical_after_resume": sum(r["identical"] for r in killed),
        "finished_before_kill": len(results) - len(killed),
        "identical_when_not_killed": sum(r["identical"] for r in results if not r["killed"]),
        "leftover_temporaries": sum(bool(r["leftovers"]) for r in results),
        "child_seconds": round(duration, 1), "results": results,
    }


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the trial run folders")
    parser.add_argument("--random", type=int, default=30, help="trials killed at a random moment")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random delays")
    parser.add_argument("--random-only", action="store_true", help="skip the kills at named fault points")
    args = parser.parse_args()
    summary = run_trials(args.out, args.random, args.seed, named=not args.random_only)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=2))


if __name__ == "__main__":
    main_cli()
