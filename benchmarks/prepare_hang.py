"""Does a preparation with worker processes hang in a process that has already trained with several threads?

The test suite hung so (issue 35): tests/test_cremad.py prepares a tiny CREMA-D with ``--workers 2``
after other tests trained models, and its forked PyAV workers blocked on a lock inherited from
torch's thread pools. This script does the same in one process: it trains a small model with every
core's thread (and keeps a thread training while preparing, so locks are held when workers start),
then runs ``g2d prepare cremad ... --workers 2`` on the test's raw fixture ``--runs`` times, each
with a timeout, and prints hangs / runs. ``--fork`` starts the workers with fork, as before the fix:

    python benchmarks/prepare_hang.py                 # 20 runs, spawn (the library's way)
    python benchmarks/prepare_hang.py --runs 5 --fork # the old way, for comparison
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from media_fixtures import write_cremad_raw  # noqa: E402

from g2d.cli import main as g2d_main  # noqa: E402
from g2d.data import prepared  # noqa: E402

OPTIONS = ["--fps", "1", "--frames", "2", "--size", "32", "--workers", "2"]


def train_steps(steps: int, stop: threading.Event | None = None) -> None:
    """A small conv net's SGD steps on every core's thread (until ``stop`` is set, when given)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    done = 0
    while done < steps or (stop is not None and not stop.is_set()):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        done += 1


class ForkContext:
    """``multiprocessing`` as ``prepared`` sees it, with every context made a fork context (the old behaviour)."""

    def __getattr__(self, name: str):
        return getattr(multiprocessing, name)

    @staticmethod
    def get_context(method: str | None = None):
        return multiprocessing.get_context("fork")


def prepare_once(raw: Path, out: Path, timeout: float) -> str:
    """One preparation in a thread: ``ok``, ``failed`` or ``hang`` (not done within ``timeout``; its workers are killed)."""
    outcome: list[int] = []
    runner = threading.Thread(target=lambda: outcome.append(g2d_main(["prepare", "cremad", "--root", str(raw),
                                                                        "--out", str(out), *OPTIONS])), daemon=True)
    runner.start()
    runner.join(timeout)
    if runner.is_alive():
        for child in multiprocessing.active_children():
            child.kill()  # the pool then fails and the thread ends
        runner.join(10)
        return "hang"
    return "ok" if outcome == [0] else "failed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a run counts as hung")
    parser.add_argument("--fork", action="store_true", help="start the workers with fork (the behaviour before the fix)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.fork:
        prepared.multiprocessing = ForkContext()  # type: ignore[assignment]
    started = time.perf_counter()
    train_steps(50)
    stop = threading.Event()
    trainer = threading.Thread(target=train_steps, args=(0, stop), daemon=True)
    trainer.start()
    outcomes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = write_cremad_raw(Path(tmp) / "CREMA-D")
        for index in range(args.runs):
            run_started = time.perf_counter()
            outcomes.append(prepare_once(raw, Path(tmp) / f"prepared{index}", args.timeout))
            print(f"run {index + 1}: {outcomes[-1]} ({time.perf_counter() - run_started:.1f} s, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)
    stop.set()
    method = "fork" if args.fork else "spawn"
    print(f"{method}: {outcomes.count('hang')} hangs / {args.runs} runs, {outcomes.count('failed')} failed "
          f"({torch.get_num_threads()} torch threads, a training thread running; {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
