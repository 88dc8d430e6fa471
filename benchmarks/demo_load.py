"""`g2d demo`'s wall time alone and beside one busy process, interleaved, with its ratios.

Each demo runs as its own `g2d demo --out TMP` command (teachers, Joint-Train, G²D from scratch).
Variants: the default (``OMP_WAIT_POLICY=PASSIVE`` from g2d, ``trainer.threads=auto``, which takes one
thread for the demo's small MLP), two passive threads (``trainer.threads=2``: what ``auto`` took on 2 cores
before its small-model rule), the old behaviour (``OMP_WAIT_POLICY=ACTIVE``: OpenMP's threads spin while
they wait) and one thread (``trainer.threads=1``). Every variant runs idle and beside one process spinning on the CPU, in
turn, ``--repeats`` times; the medians and their ratios are printed with the load average.

    python benchmarks/demo_load.py                 # the whole demo, 2 repeats
    python benchmarks/demo_load.py --short         # 10 epochs instead of 60, 1 repeat
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

G2D = [sys.executable, "-m", "g2d"]
BUSY = "while True: pass"
VARIANTS = {
    "default (passive wait, threads auto)": ({}, []),
    "trainer.threads=2 (passive)": ({}, ["trainer.threads=2"]),
    "OMP_WAIT_POLICY=ACTIVE (before issue 35)": ({"OMP_WAIT_POLICY": "ACTIVE"}, ["trainer.threads=2"]),
    "trainer.threads=1": ({}, ["trainer.threads=1"]),
}


def demo_seconds(env_extra: dict[str, str], overrides: list[str], busy: bool) -> float:
    """One `g2d demo` into a fresh folder; its wall seconds (with one spinning process beside it when ``busy``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(env_extra)
    spinner = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            subprocess.run([*G2D, "demo", "--out", str(Path(tmp) / "demo"), *overrides], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return time.perf_counter() - started
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--short", action="store_true", help="10 epochs per run, one repeat")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    repeats = 1 if args.short else args.repeats
    extra = ["trainer.epochs=10"] if args.short else []
    loads = [os.getloadavg()[0]]
    print(f"{os.cpu_count()} cores; load {loads[0]:.1f} (1-minute average) before; {repeats} repeat(s), interleaved"
          + ("; --short: 10 epochs" if args.short else ""), flush=True)
    times: dict[tuple[str, bool], list[float]] = {}
    for _ in range(repeats):
        for name in args.variants:
            env_extra, overrides = VARIANTS[name]
            for busy in (False, True):
                seconds = demo_seconds(env_extra, [*overrides, *extra], busy)
                times.setdefault((name, busy), []).append(seconds)
                loads.append(os.getloadavg()[0])
                print(f"{name}, {'beside one busy process' if busy else 'alone'}: {seconds:.1f} s "
                      f"(load {loads[-1]:.1f})", flush=True)
    default_idle = statistics.median(times[(args.variants[0], False)])
    print(f"\nload {min(loads):.1f}-{max(loads):.1f} during the runs; medians")
    print("| variant | alone s | beside one busy process s | busy / alone | alone vs default alone |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.variants:
        idle, busy = statistics.median(times[(name, False)]), statistics.median(times[(name, True)])
        print(f"| {name} | {idle:.1f} | {busy:.1f} | {busy / idle:.2f} | {idle / default_idle:.2f} |")


if __name__ == "__main__":
    main()
