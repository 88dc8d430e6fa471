"""Does a preparation with worker processes hang in a process that has already trained with several threads?

The test suite hung so (issue 35): tests/test_cremad.py prepares a tiny CREMA-D with ``--workers 2``
after other tests trained models, and its forked PyAV workers blocked on a lock inherited from
torch's thread pools. This script does the same in one process: it trains a small model with every
core's thread (``--train-while-preparing`` keeps a thread training, so locks are held when workers start),
then runs ``g2d prepare cremad ... --workers 2`` on the test's raw fixture ``--runs`` times and prints
hangs / runs. A run hangs when its workers, alive, use no CPU for ``--stall`` seconds (a loaded
machine slows them but does not stop them), or when it has not ended after ``--cap`` seconds. ``--fork`` starts the workers with fork, as before the fix:

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

POLL_SECONDS = 2.0
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


def children_cpu_seconds() -> float | None:
    """CPU seconds used so far by this process's live worker processes; None when there are none."""
    children = multiprocessing.active_children()
    if not children:
        return None
    total = 0.0
    for child in children:
        try:
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def prepare_once(raw: Path, out: Path, stall: float, cap: float) -> str:
    """One preparation in a thread: ``ok``, ``failed`` or ``hang``. A hang is workers alive that used no CPU
    for ``stall`` seconds (blocked, not slow: a loaded machine only slows them), or no end within ``cap``;
    the workers are then killed, which ends the pool and the thread."""
    outcome: list[int] = []
    runner = threading.Thread(target=lambda: outcome.append(g2d_main(["prepare", "cremad", "--root", str(raw),
                                                                        "--out", str(out), *OPTIONS])), daemon=True)
    started = time.perf_counter()
    runner.start()
    last_cpu, last_change = None, time.perf_counter()
    while runner.is_alive():
        runner.join(POLL_SECONDS)
        cpu = children_cpu_seconds()
        if cpu is None or cpu != last_cpu:
            last_cpu, last_change = cpu, time.perf_counter()
        if time.perf_counter() - last_change > stall or time.perf_counter() - started > cap:
            for child in multiprocessing.active_children():
                child.kill()
            runner.join(30)
            return "hang"
    return "ok" if outcome == [0] else "failed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--stall", type=float, default=60.0, help="seconds of workers using no CPU that count as a hang")
    parser.add_argument("--cap", type=float, default=900.0, help="seconds after which a run counts as hung regardless")
    parser.add_argument("--train-while-preparing", action="store_true",
                        help="keep a thread training during the preparations (locks held when workers start; slower)")
    parser.add_argument("--fork", action="store_true", help="start the workers with fork (the behaviour before the fix)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.fork:
        prepared.multiprocessing = ForkContext()  # type: ignore[assignment]
    started = time.perf_counter()
    train_steps(50)
    stop = threading.Event()
    if args.train_while_preparing:
        threading.Thread(target=train_steps, args=(0, stop), daemon=True).start()
    outcomes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = write_cremad_raw(Path(tmp) / "CREMA-D")
        for index in range(args.runs):
            run_started = time.perf_counter()
            outcomes.append(prepare_once(raw, Path(tmp) / f"prepared{index}", args.stall, args.cap))
            print(f"run {index + 1}: {outcomes[-1]} ({time.perf_counter() - run_started:.1f} s, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)
    stop.set()
    method = "fork" if args.fork else "spawn"
    print(f"{method}: {outcomes.count('hang')} hangs / {args.runs} runs, {outcomes.count('failed')} failed "
          f"({torch.get_num_threads()} torch threads{', a training thread running' if args.train_while_preparing else ''}; "
          f"{time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
