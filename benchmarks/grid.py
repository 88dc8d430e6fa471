"""Run the Table 4 grid (Joint-Train / UMT / G²D loss, each with and without SMP) over seeds.

Prints a markdown table of test accuracy (mean ± std over seeds) for the multimodal model
and each modality inside it, plus the teachers, and writes it to ``OUT/summary.md``. The runs
are a ``g2d.runs.sweep`` (``OUT/<variant>/seed<s>``, teachers shared per seed, finished runs skipped).

    python benchmarks/grid.py configs/mfeat.yaml --seeds 0 1 2 --out runs/grid_mfeat
    python benchmarks/grid.py configs/avdigits_cpu.yaml --seeds 0 --out runs/grid_av dataset.root=DIR
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from g2d.results.tables import percent_cell, write_summary
from g2d.runs.sweep import Point, run_sweep

VARIANTS = {
    "Joint-Train": ["method.name=joint", "smp.enabled=false"],
    "Joint-Train + SMP": ["method.name=joint", "smp.enabled=true"],
    "UMT": ["method.name=umt", "smp.enabled=false"],
    "UMT + SMP": ["method.name=umt", "smp.enabled=true"],
    "G²D loss (no SMP)": ["method.name=g2d", "smp.enabled=false"],
    "G²D": ["method.name=g2d", "smp.enabled=true"],
    "G²D, dynamic SMP": ["method.name=g2d", "smp.enabled=true", "smp.schedule=dynamic"],
    "G²D, partial": ["method.name=g2d", "smp.enabled=true", "smp.modulator=partial"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="subset of variant names")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time, each in its own process")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    unknown = [name for name in args.variants if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r} (put key=value overrides before --variants); "
                     f"variants: {', '.join(VARIANTS)}")
    points = [Point(name, VARIANTS[name]) for name in args.variants]
    results = run_sweep(args.config, args.overrides, points, args.seeds, args.out, workers=args.workers,
                        log=lambda line: print(line, flush=True))
    first = next(iter(results.values()))[0]
    modalities = first["modalities"]
    lines = [f"| method | multimodal | {' | '.join(modalities)} | wall s/run |",
             "|" + " --- |" * (len(modalities) + 3)]
    for name, runs in results.items():
        per = [percent_cell([r["test"]["per_modality"][m]["accuracy"] for r in runs]) for m in modalities]
        wall = statistics.mean(r["wall_seconds"] for r in runs)
        lines.append(f"| {name} | {percent_cell([r['test']['multimodal']['accuracy'] for r in runs])} | {' | '.join(per)} | {wall:.0f} |")
    teacher_runs = [r for runs in results.values() for r in runs if r["teachers"]]
    if teacher_runs:
        by_seed = {r["seed"]: r["teachers"] for r in teacher_runs}
        per = [percent_cell([t[m]["accuracy"] for t in by_seed.values()]) for m in modalities]
        lines.append(f"| teachers | - | {' | '.join(per)} | - |")
    table = "\n".join(lines)
    print(table)
    write_summary(args.out, table, results)


if __name__ == "__main__":
    main()
