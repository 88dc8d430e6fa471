"""N processes with batch B against 1 process with batch N*B: the same training, up to float sums.

For each method setting it trains one process with batch N*B (in this process) and N
processes with batch B (``torchrun --standalone``, gloo on the CPU or NCCL on GPUs), with the
same seed and the same teachers (trained first, untimed), then prints the largest weight difference of the final and best
checkpoints, and both runs' best epoch, test accuracy, final training loss and wall time.

    python benchmarks/ddp_parity.py configs/mfeat.yaml --batch 8 --out runs/ddp_parity trainer.progress=false
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from g2d.config import load_config
from g2d.runs.experiment import run
from g2d.runs.sweep import train_teachers

SETTINGS = {
    "Joint-Train": ["method.name=joint"],
    "G²D (ranked SMP)": ["method.name=g2d"],
    "G²D (dynamic SMP, partial)": ["method.name=g2d", "smp.schedule=dynamic", "smp.modulator=partial"],
}


def largest_difference(a: Path, b: Path) -> float:
    first, second = load_file(str(a)), load_file(str(b))
    return max((first[k].float() - second[k].float()).abs().max().item() for k in first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="per-process batch B (one process gets N*B)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), help="subset of: " + ", ".join(SETTINGS))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    n = args.processes
    teachers = f"teachers.root={args.out / 'teachers'}"
    train_teachers(args.config, [*args.overrides, teachers, f"trainer.batch_size={n * args.batch}"])  # not timed
    print(f"| setting | max weight difference (last / best) | best epoch (1 / {n}) | test accuracy % (1 / {n}) "
          f"| final train loss (1 / {n}) | wall s (1 / {n}) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.settings:
        slug = name.split(" ")[0].lower().replace("²", "2").replace("-", "")
        if "dynamic" in name:
            slug += "_dynamic"
        folders = {1: args.out / f"{slug}_1x{n * args.batch}", n: args.out / f"{slug}_{n}x{args.batch}"}
        common = [*args.overrides, *SETTINGS[name], teachers]
        started = time.perf_counter()
        run(load_config(args.config, [*common, f"trainer.batch_size={n * args.batch}", f"out={folders[1]}"]))
        single_seconds = time.perf_counter() - started
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                   "-m", "g2d.cli", "train", str(args.config), *common, f"trainer.batch_size={args.batch}",
                   f"out={folders[n]}"]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        parallel_seconds = time.perf_counter() - started
        metrics = {k: json.loads((f / "metrics.json").read_text()) for k, f in folders.items()}
        history = {k: json.loads((f / "history.json").read_text()) for k, f in folders.items()}
        last = largest_difference(*(f / "checkpoints" / "last.safetensors" for f in folders.values()))
        best = largest_difference(*(f / "checkpoints" / "best.safetensors" for f in folders.values()))
        cells = [f"{last:.1e} / {best:.1e}",
                 " / ".join(str(metrics[k]["best_epoch"]) for k in (1, n)),
                 " / ".join(f"{100 * metrics[k]['test']['multimodal']['accuracy']:.2f}" for k in (1, n)),
                 " / ".join(f"{history[k][-1]['train']['loss']:.6f}" for k in (1, n)),
                 f"{single_seconds:.0f} / {parallel_seconds:.0f}"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
