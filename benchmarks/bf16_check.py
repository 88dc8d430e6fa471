"""Does bf16 on the CPU change a result? fp32 (today's CPU default) against the fast path in bf16, paired by seed.

For each dataset and seed, Joint-Train and G²D run twice: on today's CPU default (reference path,
fp32) and with ``trainer.fast=true trainer.precision=bf16`` (bf16 autocast, fp32 master weights).
The bf16 arm trains its own teachers in bf16, as a user would get were bf16 the default. One raw
CSV row per run lands in docs/results/bf16_check.csv as soon as the run ends, and a rerun skips
rows already there (this script commits nothing). The page docs/results/bf16_check.md is
generated from the CSV alone, with paired 95 % intervals of bf16 - fp32 and the decision rule:

    nice -n 5 python benchmarks/bf16_check.py --avdigits runs/data/avdigits_m5 --out runs/bf16_check --seeds 0 1 2 3 4
    python benchmarks/bf16_check.py --page-only          # regenerate the page from the CSV

avdigits is the capped set of docs/results.md (``g2d prepare avdigits ... --snr-db -5 --max-train
1500 --max-test 1000``) on the paper tables' CPU schedule (ResNet-18 width 4, 6 epochs); mfeat is
configs/mfeat.yaml (the demo's pair, MLP encoders, 60 epochs).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

from g2d.runs.sweep import Point, run_sweep

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_tables import paired  # noqa: E402  (the paired t-interval the paper tables use)

ROOT = Path(__file__).resolve().parents[1]
CSV_PATH = ROOT / "docs" / "results" / "bf16_check.csv"
PAGE_PATH = ROOT / "docs" / "results" / "bf16_check.md"
AVDIGITS_SCHEDULE = ["model.encoder.width=4", "trainer.epochs=6", "smp.tau=[3]", "trainer.batch_size=16"]
DATASETS = {
    "mfeat": (ROOT / "configs" / "mfeat.yaml", []),
    "avdigits": (ROOT / "configs" / "avdigits_cpu.yaml", AVDIGITS_SCHEDULE),
}
METHODS = {"Joint-Train": ["method.name=joint", "smp.enabled=false"], "G²D": ["method.name=g2d", "smp.enabled=true"]}
PRECISIONS = {"fp32": ["trainer.fast=false"], "bf16": ["trainer.fast=true", "trainer.precision=bf16"]}
FIELDS = ["dataset", "method", "precision", "seed", "path", "autocast", "modality_1", "modality_2", "best_epoch",
          "multimodal", "acc_1", "acc_2", "teacher_1", "teacher_2", "wall_seconds", "load"]
# Written before any result was seen; the page applies it to whatever rows the CSV holds.
RULE = """bf16 becomes the CPU default only if all of these hold, on both datasets:

1. for Joint-Train and G²D, every paired 95 % interval of bf16 − fp32 (multimodal and each modality's
   test accuracy) contains 0: no shift is detected;
2. every such interval for multimodal accuracy lies within ±2 points: a shift that could hide inside
   the interval is smaller than the effects the results pages report;
3. the verdict of G²D − Joint-Train (multimodal: higher, lower or not separable by its paired interval)
   is the same under bf16 as under fp32;
4. at least 5 paired seeds per dataset.

If 1 or 3 fails, bf16 shifts a result: fp32 stays the default and the page names the shift. If only 2
or 4 fails, the check is inconclusive: fp32 stays the default until more seeds narrow the intervals."""


def read_rows(path: Path = CSV_PATH) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def append_row(row: dict, path: Path = CSV_PATH) -> None:
    """One run's row, appended in one write (two studies may append to the same file)."""
    new = not path.is_file()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def csv_row(dataset: str, method: str, precision: str, metrics: dict, load: str) -> dict:
    modalities = metrics["modalities"]
    per = metrics["test"]["per_modality"]
    teachers = metrics.get("teachers") or {}
    path = metrics["environment"]["training_path"]
    return {"dataset": dataset, "method": method, "precision": precision, "seed": metrics["seed"],
            "path": path["path"], "autocast": path["precision"], "modality_1": modalities[0], "modality_2": modalities[1],
            "best_epoch": metrics["best_epoch"], "multimodal": metrics["test"]["multimodal"]["accuracy"],
            "acc_1": per[modalities[0]]["accuracy"], "acc_2": per[modalities[1]]["accuracy"],
            "teacher_1": teachers.get(modalities[0], {}).get("accuracy", ""),
            "teacher_2": teachers.get(modalities[1], {}).get("accuracy", ""),
            "wall_seconds": metrics["wall_seconds"], "load": load}


def run_study(datasets: list[str], seeds: list[int], avdigits: Path | None, out: Path) -> None:
    """Seed by seed (so an interrupted study leaves whole pairs), every dataset, method and precision."""
    for seed in seeds:
        for dataset in datasets:
            done = {(r["method"], r["precision"]) for r in read_rows() if r["dataset"] == dataset and int(r["seed"]) == seed}
            todo = [(m, p) for m in METHODS for p in PRECISIONS if (m, p) not in done]
            if not todo:
                continue
            config, schedule = DATASETS[dataset]
            base = [*schedule, "trainer.progress=false"] + ([f"dataset.root={avdigits}"] if dataset == "avdigits" else [])
            points = [Point(f"{m}, {p}", [*METHODS[m], *PRECISIONS[p]]) for m, p in todo]
            load = f"{os.getloadavg()[0]:.1f}"
            results = run_sweep(config, base, points, [seed], out / dataset, log=lambda line: print(line, flush=True))
            load = f"{load}-{os.getloadavg()[0]:.1f}"
            for (method, precision), point in zip(todo, points):
                append_row(csv_row(dataset, method, precision, results[point.label][0], load))


def interval(first: list[float], second: list[float]) -> tuple[float, float, float]:
    """Paired mean difference of ``first - second`` in points and its 95 % t-interval."""
    return paired(first, second)[:3]


def text(mean: float, low: float, high: float) -> str:
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]"


def verdict(low: float, high: float) -> str:
    return "higher" if low > 0 else "lower" if high < 0 else "not separable"


def render(rows: list[dict]) -> str:
    """The page: setup, the rule, accuracies, paired bf16 - fp32 intervals, the G²D - Joint-Train verdicts, the decision."""
    table: dict[tuple[str, str, str], dict[int, dict]] = {}
    for row in rows:
        table.setdefault((row["dataset"], row["method"], row["precision"]), {})[int(row["seed"])] = row
    lines = ["# Does bf16 on the CPU change a result? (generated from bf16_check.csv)", "",
             "- page: `python benchmarks/bf16_check.py --page-only`; study: see the script's docstring",
             "- fp32 = today's CPU default (reference path); bf16 = `trainer.fast=true trainer.precision=bf16` "
             "(bf16 autocast, fp32 weights and loss reductions); the bf16 arm trains its teachers in bf16 too",
             "- mfeat: configs/mfeat.yaml (pix + mor, MLP encoders, 60 epochs); avdigits: capped -5 dB set, "
             "configs/avdigits_cpu.yaml with ResNet-18 width 4, 6 epochs, batch 16 (as docs/results/paper_tables.md)",
             "- test accuracy at the epoch chosen on validation; `load` in the CSV is the 1-minute load average "
             "before-after each seed's runs (the machine was shared)", "",
             "## Decision rule (written before the results)", "", RULE, "",
             "## Test accuracy (%), mean ± std over seeds", "",
             "| dataset | method | precision | seeds | multimodal | modality 1 | modality 2 | teachers | wall s/run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def pct(values: list[float]) -> str:
        mean = 100 * statistics.mean(values)
        return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"

    for (dataset, method, precision), runs in sorted(table.items()):
        rs = list(runs.values())
        teach = [r for r in rs if r["teacher_1"]]
        teachers = (f"{rs[0]['modality_1']} {pct([float(r['teacher_1']) for r in teach])}, "
                    f"{rs[0]['modality_2']} {pct([float(r['teacher_2']) for r in teach])}") if teach else "-"
        lines.append(f"| {dataset} | {method} | {precision} | {len(rs)} | {pct([float(r['multimodal']) for r in rs])} | "
                     f"{rs[0]['modality_1']} {pct([float(r['acc_1']) for r in rs])} | "
                     f"{rs[0]['modality_2']} {pct([float(r['acc_2']) for r in rs])} | {teachers} | "
                     f"{statistics.mean(float(r['wall_seconds']) for r in rs):.0f} |")
    lines += ["", "## bf16 − fp32, paired by seed (points, 95 % t-interval)", "",
              "| dataset | method | seeds | multimodal | modality 1 | modality 2 | wall time bf16 / fp32 |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    shifts, wide, few, verdict_changes = [], [], [], []
    datasets = sorted({d for d, _, _ in table})
    for dataset in datasets:
        for method in METHODS:
            fp32, bf16 = table.get((dataset, method, "fp32"), {}), table.get((dataset, method, "bf16"), {})
            seeds = sorted(set(fp32) & set(bf16))
            if len(seeds) < 5:
                few.append(f"{dataset} {method}: {len(seeds)} paired seeds")
            if len(seeds) < 2:
                continue
            cells = []
            for column in ("multimodal", "acc_1", "acc_2"):
                mean, low, high = interval([float(bf16[s][column]) for s in seeds], [float(fp32[s][column]) for s in seeds])
                cells.append(text(mean, low, high))
                if low > 0 or high < 0:
                    shifts.append(f"{dataset} {method} {column}: {text(mean, low, high)}")
                if column == "multimodal" and (low < -2 or high > 2):
                    wide.append(f"{dataset} {method}: {text(mean, low, high)}")
            ratio = statistics.mean(float(bf16[s]["wall_seconds"]) / float(fp32[s]["wall_seconds"]) for s in seeds)
            names = f"{fp32[seeds[0]]['modality_1']}", f"{fp32[seeds[0]]['modality_2']}"
            lines.append(f"| {dataset} | {method} | {len(seeds)} | {cells[0]} | {names[0]} {cells[1]} | "
                         f"{names[1]} {cells[2]} | {ratio:.2f} |")
    lines += ["", "## The verdict G²D − Joint-Train (multimodal, points), under each precision", "",
              "| dataset | precision | seeds | G²D − Joint-Train | verdict |", "| --- | --- | --- | --- | --- |"]
    for dataset in datasets:
        verdicts = {}
        for precision in PRECISIONS:
            g2d, joint = table.get((dataset, "G²D", precision), {}), table.get((dataset, "Joint-Train", precision), {})
            seeds = sorted(set(g2d) & set(joint))
            if len(seeds) < 2:
                continue
            mean, low, high = interval([float(g2d[s]["multimodal"]) for s in seeds], [float(joint[s]["multimodal"]) for s in seeds])
            verdicts[precision] = verdict(low, high)
            lines.append(f"| {dataset} | {precision} | {len(seeds)} | {text(mean, low, high)} | {verdicts[precision]} |")
        if len(set(verdicts.values())) > 1:
            verdict_changes.append(f"{dataset}: {verdicts['fp32']} under fp32, {verdicts['bf16']} under bf16")
    if len(datasets) < 2:
        few.append("only " + ", ".join(datasets or ["no dataset"]) + " has results")
    lines += ["", "## Decision", ""]
    if shifts or verdict_changes:
        lines.append("**bf16 shifts a result; fp32 stays the CPU default.**")
        lines += [f"- shift: {s}" for s in shifts] + [f"- verdict changed: {v}" for v in verdict_changes]
        lines += [f"- also, interval wider than ±2 points: {w}" for w in wide] + [f"- also, too few seeds: {f}" for f in few]
    elif wide or few:
        lines.append("**Inconclusive: no shift detected, but the rule's other conditions are not met; fp32 stays the CPU default.**")
        lines += [f"- interval wider than ±2 points: {w}" for w in wide] + [f"- too few seeds: {f}" for f in few]
    else:
        lines.append("**No shift: every condition of the rule holds; bf16 may become the CPU default.**")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--avdigits", type=Path, help="the prepared capped avdigits folder (dataset.root)")
    parser.add_argument("--out", type=Path, help="where the runs go (outside the repository or under runs/)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--page-only", action="store_true", help="regenerate the page from the committed CSV")
    args = parser.parse_args()
    if not args.page_only:
        if args.out is None or ("avdigits" in args.datasets and args.avdigits is None):
            parser.error("--out (and --avdigits for avdigits) are needed to run the study (or pass --page-only)")
        started = time.perf_counter()
        run_study(args.datasets, args.seeds, args.avdigits, args.out)
        print(f"study part done in {(time.perf_counter() - started) / 60:.0f} min", flush=True)
    rows = read_rows()
    if not rows:
        sys.exit(f"{CSV_PATH}: no rows yet; run the study first")
    PAGE_PATH.write_text(render(rows))
    print(PAGE_PATH.read_text())


if __name__ == "__main__":
    main()
