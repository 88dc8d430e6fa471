"""``g2d tune`` against the 3x3 ``g2d sweep`` grid on avdigits (CPU schedule), same budget and seeds.

    nice -n 10 python benchmarks/tune_vs_grid.py [--dataset avdigits|mfeat] [--only grid|tune] [--seeds 0]

The grid crosses three values of smp.tau with optim.lr in 3e-3,1e-2,3e-2 (9 runs per seed, alpha = beta
= 1); the tune searches tau, alpha, beta and lr over ranges spanning those values for 9 trials. Both
distil from one pair of teachers per seed (``teachers.root`` set), trained once at the config's lr, so
the comparison is about the students' settings. Each best configuration is picked by its validation
score; its test score is read from its runs (a retrain with the same seeds is the same run). Resumable:
a rerun continues the sweep and the study where they stopped and adds its wall time to the record.
Writes OUT/result.json and prints the Markdown rows for docs/results/tune.md; commits nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LR_GRID, LR_SPACE = "optim.lr=3e-3,1e-2,3e-2", "optim.lr=3e-3:3e-2:log"
WEIGHTS = ["method.g2d.alpha=0.1:10:log", "method.g2d.beta=0.1:10:log"]
# dataset: (config and overrides, grid, space). avdigits is the CPU schedule (4 epochs, tau 2 of them);
# mfeat (60 epochs in its config) runs 15 epochs here, so the grid's tau spans 2 to 6.
SETTINGS = {
    "avdigits": (["configs/avdigits_cpu.yaml"], ["smp.tau=[1],[2],[3]", LR_GRID], ["smp.tau=[1:3]", *WEIGHTS, LR_SPACE]),
    "mfeat": (["configs/mfeat.yaml", "trainer.epochs=15"], ["smp.tau=[2],[4],[6]", LR_GRID],
              ["smp.tau=[1:7]", *WEIGHTS, LR_SPACE]),
}


def g2d(args: list[str], walls: Path, name: str) -> None:
    """Run a g2d command, adding its wall time to ``walls`` (a JSON of seconds per step, kept across reruns)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "g2d", *args], cwd=ROOT)
    seconds = json.loads(walls.read_text()) if walls.is_file() else {}
    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
    walls.write_text(json.dumps(seconds, indent=2))
    if result.returncode:
        sys.exit(f"{name}: g2d exited {result.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(SETTINGS), default="avdigits")
    parser.add_argument("--out", type=Path, help="default runs/tune_bench_<dataset>")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", choices=["grid", "tune"], help="run one side (two processes can run both at once)")
    args = parser.parse_args()
    config, grid_keys, space = SETTINGS[args.dataset]
    out = (ROOT / (args.out or Path(f"runs/tune_bench_{args.dataset}"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if len(args.seeds) != 1:
        sys.exit("one seed: the teachers.root below is per seed")
    seed = args.seeds[0]
    common = [*config, "trainer.progress=false", f"teachers.root={out / 'teachers' / f'{args.dataset}_seed{seed}'}"]
    seeds = ["--seeds", *map(str, args.seeds)]
    if args.only in (None, "grid") and not (out / "grid" / "sweep.json").is_file():
        g2d(["sweep", *common, *seeds, "--grid", *grid_keys, "--out", str(out / "grid")], out / f"walls_grid.json", "grid")
    if args.only in (None, "tune") and not (out / "tune" / "tune.json").is_file():
        g2d(["tune", *common, *seeds, "--space", *space, "--trials", "9", "--out", str(out / "tune")],
            out / "walls_tune.json", "tune")
    if not ((out / "grid" / "sweep.json").is_file() and (out / "tune" / "tune.json").is_file()):
        return
    grid = json.loads((out / "grid" / "sweep.json").read_text())
    best_point = max(grid["points"], key=lambda p: p["val"]["multimodal"]["accuracy"]["mean"])
    tune = json.loads((out / "tune" / "tune.json").read_text())
    best_runs = [Path(tune["best"]["folder"]) / f"seed{s}" / "metrics.json" for s in args.seeds]
    tune_test = [json.loads(p.read_text())["test"]["multimodal"]["accuracy"] for p in best_runs]
    walls = {**json.loads((out / "walls_grid.json").read_text()), **json.loads((out / "walls_tune.json").read_text())}
    result = {
        "seeds": args.seeds, "load": os.getloadavg(),
        "grid": {"best": best_point["label"], "val": best_point["val"]["multimodal"]["accuracy"]["mean"],
                 "test": best_point["test"]["multimodal"]["accuracy"]["mean"], "runs": 9 * len(args.seeds),
                 "wall_seconds": walls["grid"]},
        "tune": {"best": tune["best"]["params"], "val": tune["best"]["value"], "test": sum(tune_test) / len(tune_test),
                 "trials": tune["trials"], "pruned": tune["pruned"], "wall_seconds": walls["tune"]},
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    for side in ("grid", "tune"):
        r = result[side]
        print(f"| {side} | {r['best']} | {100 * r['val']:.1f} | {100 * r['test']:.1f} | {r['wall_seconds'] / 60:.0f} |")


if __name__ == "__main__":
    main()
