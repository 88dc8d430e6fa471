"""``g2d tune`` against the 3x3 ``g2d sweep`` grid (avdigits CPU schedule, or mfeat), same budget and seeds.

    nice -n 10 python benchmarks/tune_vs_grid.py [--dataset avdigits|mfeat] [--data DIR] [--only STEP] [--seeds 0] [--retrain-seeds 1 2]

The grid crosses three values of smp.tau with optim.lr in 3e-3,1e-2,3e-2 (9 runs per seed, alpha = beta
= 1); the tune searches tau, alpha, beta and lr over ranges spanning those values for 9 trials. Both
distil from one pair of teachers per seed (``teachers.root`` set), trained once by the grid's first
configuration (lr 3e-3; a sweep trains a shared teachers folder with its first run's settings), so the
comparison is about the students' settings. Each best configuration is picked by its validation
score; its test score is the mean over the tuning seed's run and runs with --retrain-seeds. Resumable:
a rerun continues the sweep and the study where they stopped and adds its wall time to the record.
Writes OUT/result.json and prints the Markdown rows for docs/results/tune.md; commits nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LR_GRID, LR_SPACE = "optim.lr=3e-3,1e-2,3e-2", "optim.lr=3e-3:3e-2:log"
WEIGHTS = ["method.g2d.alpha=0.1:10:log", "method.g2d.beta=0.1:10:log"]
# dataset: (config and overrides, grid, space). avdigits is the CPU schedule (4 epochs, tau 2 of them);
# mfeat (60 epochs at batch 16 in its config) runs 6 epochs at batch 64 here, which a CPU shared by many
# processes finishes in the time left (avdigits' did not), so tau spans 1 to 3 (5 in the tune).
SETTINGS = {
    "avdigits": (["configs/avdigits_cpu.yaml"], ["smp.tau=[1],[2],[3]", LR_GRID], ["smp.tau=[1:3]", *WEIGHTS, LR_SPACE]),
    "mfeat": (["configs/mfeat.yaml", "trainer.epochs=6", "trainer.batch_size=64"], ["smp.tau=[1],[2],[3]", LR_GRID],
              ["smp.tau=[1:5]", *WEIGHTS, LR_SPACE]),
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
    parser.add_argument("--data", type=Path, help="dataset.root for the runs (default: the config's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--retrain-seeds", type=int, nargs="*", default=[1, 2],
                        help="further seeds each side's best config is trained with, for its test score (default 1 2)")
    parser.add_argument("--only", choices=["grid", "tune", "retrain-grid", "retrain-tune"],
                        help="run one step (two processes can run grid and tune, or both retrains, at once)")
    args = parser.parse_args()
    config, grid_keys, space = SETTINGS[args.dataset]
    config = [*config, f"dataset.root={args.data.resolve()}"] if args.data else config
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
    # Each side's best config, retrained with further seeds (the tuning seed's run is the retrain with that seed).
    best = {"grid": ([*config, "trainer.progress=false", *best_point["overrides"]], best_point["runs"]),
            "tune": ([str(out / "tune" / "best.yaml")], [str(Path(tune["best"]["folder"]) / f"seed{s}") for s in args.seeds])}
    first = grid["points"][0]["overrides"]
    for extra in args.retrain_seeds:  # the further seeds' teachers, trained as the tuning seed's were
        if args.only in (None, "retrain-grid", "retrain-tune"):  # existing teachers are checked, not retrained
            g2d(["sweep", *config, "trainer.progress=false", *first,
                 f"teachers.root={out / 'teachers' / f'{args.dataset}_seed{extra}'}", "--seeds", str(extra),
                 "--out", str(out / "retrain" / f"teachers_seed{extra}"), "--teachers-only"],
                out / "walls_retrain_teachers.json", "teachers")
    for side, (train, runs) in best.items():
        for extra in args.retrain_seeds:
            run_dir = out / "retrain" / side / f"seed{extra}"
            if args.only in (None, f"retrain-{side}") and not (run_dir / "metrics.json").is_file():
                g2d(["train", *train, f"seed={extra}", f"out={run_dir}", "trainer.resume=true",
                     f"teachers.root={out / 'teachers' / f'{args.dataset}_seed{extra}'}"], out / f"walls_retrain_{side}.json",
                    "retrain")
            runs.append(str(run_dir))
    if not all((Path(r) / "metrics.json").is_file() for _, runs in best.values() for r in runs):
        return
    walls = {side: json.loads((out / f"walls_{side}.json").read_text()) for side in ("grid", "tune")}
    result = {"dataset": args.dataset, "seeds": args.seeds, "retrain_seeds": args.retrain_seeds,
              "load_at_end": os.getloadavg()}
    for side, label, val in (("grid", best_point["label"], best_point["val"]["multimodal"]["accuracy"]["mean"]),
                             ("tune", tune["best"]["params"], tune["best"]["value"])):
        tests = [json.loads((Path(r) / "metrics.json").read_text())["test"]["multimodal"]["accuracy"] for r in best[side][1]]
        result[side] = {"best": label, "val": val, "test": tests, "test_mean": statistics.mean(tests),
                        "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
                        "search_wall_seconds": walls[side][side], "runs": 9 * len(args.seeds)}
    result["tune"]["pruned"] = tune["pruned"]
    (out / "result.json").write_text(json.dumps(result, indent=2))
    for side in ("grid", "tune"):
        r = result[side]
        print(f"| {side} | {r['best']} | {100 * r['val']:.1f} | {100 * r['test_mean']:.1f} ± {100 * r['test_std']:.1f} "
              f"| {r['search_wall_seconds'] / 60:.1f} |")


if __name__ == "__main__":
    main()
