"""Analogues of the paper's Tables 4, 6 and 7, the SMP variants, the window length and Eq. 2's reduction.

Every configuration runs for every seed through ``g2d.runs.sweep`` (teachers shared per seed, finished
runs skipped, so an interrupted grid continues). Each run's test scores under every selection rule
(``trainer.select``: val, last, test) go to one raw CSV row; the tables are generated from that CSV
alone, as paired differences by seed with a 95 % t-interval:

    python benchmarks/paper_tables.py --data /work/data/avdigits_m5 --out /work/runs/paper_tables \\
        --seeds 0 1 2 3 4 --workers 2
    python benchmarks/paper_tables.py --tables-only      # regenerate docs/results/paper_tables.md from the CSV

The data is ``g2d prepare avdigits ... --snr-db -5 --max-train 1500 --max-test 1000`` (docs/results.md
says why: at -20 dB and this size the audio teacher stays at chance).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

from g2d.results.tables import paired_difference
from g2d.runs.sweep import Point, run_sweep

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "avdigits_cpu.yaml"
RESULTS = ROOT / "docs" / "results"
CSV_PATH = RESULTS / "paper_tables.csv"
META_PATH = RESULTS / "paper_tables.json"
TABLES_PATH = RESULTS / "paper_tables.md"
# The CPU schedule: ResNet-18 at width 4, 6 epochs, SMP over the first half (tau 3), batch 16, lr 1e-2.
SCHEDULE = ["model.encoder.width=4", "trainer.epochs=6", "smp.tau=[3]", "trainer.batch_size=16", "trainer.progress=false"]
MODALITIES = ("audio", "image")
RULES = ("val", "last", "test")

G2D = ["method.name=g2d", "smp.enabled=true"]
POINTS = {
    # Table 4
    "Joint-Train": ["method.name=joint", "smp.enabled=false"],
    "Joint-Train + SMP": ["method.name=joint", "smp.enabled=true"],
    "UMT": ["method.name=umt", "smp.enabled=false"],
    "UMT + SMP": ["method.name=umt", "smp.enabled=true"],
    "G²D loss (no SMP)": ["method.name=g2d", "smp.enabled=false"],
    "G²D": G2D,
    # Table 6
    "G²D, partial modulation": [*G2D, "smp.modulator=partial"],
    # Table 7 (alpha, beta around the default 1, 1)
    "G²D, alpha 0.1": [*G2D, "method.g2d.alpha=0.1"],
    "G²D, alpha 10": [*G2D, "method.g2d.alpha=10"],
    "G²D, beta 0.1": [*G2D, "method.g2d.beta=0.1"],
    "G²D, beta 10": [*G2D, "method.g2d.beta=10"],
    # SMP variants (G²D is ranked, freeze)
    "G²D, dynamic, freeze": [*G2D, "smp.schedule=dynamic"],
    "G²D, ranked, conv_grad": [*G2D, "smp.suppression=conv_grad"],
    "G²D, dynamic, conv_grad": [*G2D, "smp.schedule=dynamic", "smp.suppression=conv_grad"],
    # window length (G²D is tau 3)
    "G²D, tau 1": [*G2D, "smp.tau=[1]"],
    "G²D, tau 5": [*G2D, "smp.tau=[5]"],
    # Eq. 2 as written (G²D is the authors' mean)
    "G²D, Eq. 2 sum": [*G2D, "method.g2d.feature_reduction=sum"],
}
TABLE4 = ["Joint-Train", "Joint-Train + SMP", "UMT", "UMT + SMP", "G²D loss (no SMP)", "G²D"]
# (section, first, second): each row is first - second, paired by seed.
COMPARISONS = [
    ("Table 4", "Joint-Train + SMP", "Joint-Train"),
    ("Table 4", "UMT + SMP", "UMT"),
    ("Table 4", "G²D", "G²D loss (no SMP)"),
    ("Table 4", "G²D loss (no SMP)", "Joint-Train"),
    ("Table 4", "G²D", "Joint-Train"),
    ("Table 4", "G²D", "UMT + SMP"),
    ("Table 6", "G²D, partial modulation", "G²D"),
    ("Table 7", "G²D, alpha 0.1", "G²D"),
    ("Table 7", "G²D, alpha 10", "G²D"),
    ("Table 7", "G²D, beta 0.1", "G²D"),
    ("Table 7", "G²D, beta 10", "G²D"),
    ("SMP variants", "G²D, dynamic, freeze", "G²D"),
    ("SMP variants", "G²D, ranked, conv_grad", "G²D"),
    ("SMP variants", "G²D, dynamic, conv_grad", "G²D"),
    ("window", "G²D, tau 1", "G²D"),
    ("window", "G²D, tau 5", "G²D"),
    ("Eq. 2", "G²D, Eq. 2 sum", "G²D"),
]


def csv_row(label: str, metrics: dict) -> dict:
    """One run's raw result: its configuration, seed, every rule's test accuracy and epoch, wall time."""
    row = {"config": label, "overrides": " ".join(POINTS[label]), "seed": metrics["seed"],
           "wall_seconds": metrics["wall_seconds"]}
    for rule in RULES:
        chosen = metrics["selection"][rule]
        row[f"{rule}_best_epoch"] = chosen["best_epoch"]
        row[f"{rule}_multimodal"] = chosen["test"]["multimodal"]["accuracy"]
        for m in MODALITIES:
            row[f"{rule}_{m}"] = chosen["test"]["per_modality"][m]["accuracy"]
    return row


def read_rows(path: Path) -> dict[str, dict[int, dict]]:
    """``{config: {seed: row}}`` from the raw CSV, numbers parsed."""
    table: dict[str, dict[int, dict]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            parsed = {k: v if k in ("config", "overrides") else float(v) for k, v in row.items()}
            table.setdefault(row["config"], {})[int(parsed["seed"])] = parsed
    return table


def percent(values: list[float]) -> str:
    mean = 100 * statistics.mean(values)
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def interval(first: list[float], second: list[float]) -> tuple[str, str]:
    """``+1.2 [-0.3, +2.7]`` in points and its verdict: which side of zero the interval lies on, if any."""
    mean, low, high = (100 * v for v in paired_difference(first, second))
    verdict = "higher" if low > 0 else "lower" if high < 0 else "not separable"
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]", verdict


def comparison_rows(table: dict[str, dict[int, dict]], rule: str) -> list[str]:
    rows = []
    for section, first, second in COMPARISONS:
        if first not in table or second not in table:
            continue
        seeds = sorted(set(table[first]) & set(table[second]))
        if len(seeds) < 2:
            continue
        cells = [interval([table[first][s][f"{rule}_{c}"] for s in seeds], [table[second][s][f"{rule}_{c}"] for s in seeds])
                 for c in ("multimodal", *MODALITIES)]
        rows.append(f"| {section} | {first} − {second} | {len(seeds)} | "
                    + " | ".join(f"{text} ({verdict})" if c == 0 else text for c, (text, verdict) in enumerate(cells))
                    + " |")
    return rows


def render(table: dict[str, dict[int, dict]], meta: dict) -> str:
    """The markdown page: setup, Table 4, paired comparisons under val and test selection, the selection rule."""
    parts = meta.get("parts", [])
    lines = ["# Paper tables on avdigits (CPU schedule), generated from paper_tables.csv", "",
             "- tables: `python benchmarks/paper_tables.py --tables-only`",
             f"- data: {meta.get('data', '?')}", f"- schedule: {meta.get('schedule', '?')}",
             f"- seeds: {meta.get('seeds', '?')}; workers: {meta.get('workers', '?')}; machine: {meta.get('machine', '?')}",
             f"- the grid ran in {len(parts)} part(s), {sum(p['elapsed_seconds'] for p in parts) / 60:.0f} min of wall "
             "time in all; a configuration rerun in a later part replaced its rows (per-run wall times follow "
             "the load of their part):",
             *(f"  - `{p['command']}`: {p['elapsed_seconds'] / 60:.0f} min, load {p['load']}" for p in parts), "",
             "## Table 4 analogue: test accuracy (%), mean ± std over seeds, epoch chosen on validation", "",
             "| method | seeds | multimodal | audio | image | wall s/run |", "| --- | --- | --- | --- | --- | --- |"]
    for label in [*TABLE4, *(p for p in POINTS if p not in TABLE4)]:
        runs = list(table.get(label, {}).values())
        if not runs:
            continue
        cells = [percent([r[f"val_{c}"] for r in runs]) for c in ("multimodal", *MODALITIES)]
        lines.append(f"| {label} | {len(runs)} | {' | '.join(cells)} | {statistics.mean(r['wall_seconds'] for r in runs):.0f} |")
    header = ["| section | comparison (A − B) | seeds | multimodal Δ [95% CI] | audio Δ | image Δ |",
              "| --- | --- | --- | --- | --- | --- |"]
    lines += ["", "## Paired differences (points), epoch chosen on validation", "",
              "Mean of A − B over seeds with a 95 % t-interval; 'higher'/'lower' when the interval excludes zero.", "",
              *header, *comparison_rows(table, "val"),
              "", "## The same under the authors' rule (epoch with the best test score: optimistic)", "",
              *header, *comparison_rows(table, "test"),
              "", "## How much the selection rule matters (same runs, points of test accuracy)", "",
              "| method | seeds | test rule − val rule | last − val rule | val-rule epoch (mean) |",
              "| --- | --- | --- | --- | --- |"]
    for label in TABLE4:
        runs = list(table.get(label, {}).values())
        if len(runs) < 2:
            continue
        val = [r["val_multimodal"] for r in runs]
        optimistic, _ = interval([r["test_multimodal"] for r in runs], val)
        last, _ = interval([r["last_multimodal"] for r in runs], val)
        epoch = statistics.mean(r["val_best_epoch"] for r in runs)
        lines.append(f"| {label} | {len(runs)} | {optimistic} | {last} | {epoch:.1f} |")
    return "\n".join(lines) + "\n"


def write_csv(results: dict[str, list[dict]], path: Path) -> None:
    """Write this grid's rows into the raw CSV; rows of configurations not run this time are kept."""
    kept = []
    if path.is_file():
        with path.open(newline="") as handle:
            kept = [row for row in csv.DictReader(handle) if row["config"] not in results]
    rows = kept + [csv_row(label, metrics) for label, runs in results.items() for metrics in runs]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="the prepared avdigits folder (dataset.root)")
    parser.add_argument("--out", type=Path, help="where the runs go (outside the repository)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--points", nargs="*", default=list(POINTS), help="subset of configuration names")
    parser.add_argument("--machine", default="2-core CPU shared with other jobs", help="what ran it, for the page")
    parser.add_argument("--tables-only", action="store_true", help="regenerate the tables from the committed CSV")
    args = parser.parse_args()
    if not args.tables_only:
        if args.data is None or args.out is None:
            parser.error("--data and --out are needed to run the grid (or pass --tables-only)")
        unknown = [p for p in args.points if p not in POINTS]
        if unknown:
            parser.error(f"--points: unknown configuration {unknown[0]!r}; known: {', '.join(POINTS)}")
        started, load_before = time.perf_counter(), os.getloadavg()[0]
        results = run_sweep(CONFIG, [f"dataset.root={args.data}", *SCHEDULE], [Point(p, POINTS[p]) for p in args.points],
                            args.seeds, args.out, workers=args.workers, log=lambda line: print(line, flush=True))
        RESULTS.mkdir(parents=True, exist_ok=True)
        write_csv(results, CSV_PATH)
        part = {"command": shlex.join(["python", "benchmarks/paper_tables.py", *sys.argv[1:]]),
                "elapsed_seconds": round(time.perf_counter() - started),
                "load": f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (1-minute average)"}
        before = json.loads(META_PATH.read_text()) if META_PATH.is_file() else {}
        meta = {"data": f"avdigits capped ({args.data.name}: see docs/results.md)",
                "schedule": f"{CONFIG.name} with {' '.join(SCHEDULE)}", "seeds": args.seeds, "workers": args.workers,
                "machine": f"{args.machine} ({platform.machine()}, OMP_NUM_THREADS=1 per worker)",
                "parts": [*before.get("parts", []), part]}  # a grid run in parts keeps every part's command
        META_PATH.write_text(json.dumps(meta, indent=2) + "\n")
    if not CSV_PATH.is_file():
        sys.exit(f"{CSV_PATH}: no raw results yet; run the grid first")
    meta = json.loads(META_PATH.read_text()) if META_PATH.is_file() else {}
    page = render(read_rows(CSV_PATH), meta)
    TABLES_PATH.write_text(page)
    print(page)


if __name__ == "__main__":
    main()
