"""Run the Table 4 grid (Joint-Train / UMT / G²D loss, each with and without SMP) over seeds.

Prints a markdown table of test accuracy (mean ± std over seeds) for the multimodal model
and each modality inside it, plus the teachers, and writes it to ``OUT/summary.md``.

    python benchmarks/grid.py configs/mfeat.yaml --seeds 0 1 2 --out runs/grid_mfeat
    python benchmarks/grid.py configs/avdigits_cpu.yaml --seeds 0 --out runs/grid_av dataset.root=DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from g2d.config import load_config
from g2d.data import load_dataset
from g2d.experiment import run
from g2d.report import percent_cell, write_summary

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
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    unknown = [name for name in args.variants if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r} (put key=value overrides before --variants); "
                     f"variants: {', '.join(VARIANTS)}")
    results: dict[str, list[dict]] = {}
    data = None
    for name in args.variants:
        for seed in args.seeds:
            slug = name.lower().replace(" ", "_").replace("+", "").replace(",", "").replace("²", "2").replace("(", "").replace(")", "")
            config = load_config(args.config, [*args.overrides, *VARIANTS[name], f"seed={seed}",
                                               f"out={args.out / f'seed{seed}' / slug}",
                                               f"teachers.root={args.out / f'seed{seed}' / 'teachers'}"])
            data = data or load_dataset(config.dataset)
            started = time.perf_counter()
            metrics = run(config, data)
            metrics["total_seconds"] = time.perf_counter() - started
            results.setdefault(name, []).append(metrics)
            print(f"{name} seed {seed}: {json.dumps(metrics['test'])} ({metrics['wall_seconds']:.0f} s)", flush=True)
        # After every variant, so that a grid stopped by a time limit keeps the rows it finished.
        write_summary(args.out, summary_table(results), results)
    print(summary_table(results))


def summary_table(results: dict[str, list[dict]]) -> str:
    """Markdown rows of test accuracy (mean ± std over seeds) per variant, plus the teachers."""
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
    return "\n".join(lines)


if __name__ == "__main__":
    main()
