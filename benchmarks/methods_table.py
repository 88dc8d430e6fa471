"""Run several methods over seeds on one config and tabulate test accuracy (mean ± std).

Each method is ``name`` or ``label=override,override`` (e.g. ``"DLMG learned=method.name=dlmg,
method.dlmg.strategy=learned"``). The runs are a ``g2d.runs.sweep`` (``OUT/<label>/seed<s>``): each
seed's teachers are trained once, before the runs, and shared by every method; finished runs
are skipped. Writes ``OUT/summary.md`` and ``OUT/results.json``.

    python benchmarks/methods_table.py configs/mfeat.yaml --methods joint mla ume --seeds 0 1 2 \
        --out runs/methods_mfeat trainer.progress=false
"""

from __future__ import annotations

import argparse
from pathlib import Path

from g2d.results.tables import percent_cell, write_summary
from g2d.runs.sweep import Point, run_sweep


def parse_method(spec: str) -> tuple[str, list[str]]:
    """``mla`` -> ("mla", ["method.name=mla"]); ``label=a=1,b=2`` -> ("label", ["a=1", "b=2"])."""
    if "=" not in spec:
        return spec, [f"method.name={spec}"]
    label, overrides = spec.split("=", 1)
    return label, overrides.split(",")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=1, help="runs at a time, each in its own process")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    points = [Point(label, overrides) for label, overrides in map(parse_method, args.methods)]
    results = run_sweep(args.config, args.overrides, points, args.seeds, args.out, workers=args.workers,
                        log=lambda line: print(line, flush=True))
    modalities = next(iter(results.values()))[0]["modalities"]
    lines = [f"| method | multimodal | {' | '.join(modalities)} | best epochs |",
             "|" + " --- |" * (len(modalities) + 3)]
    for label, runs in results.items():
        per = [percent_cell([r["test"]["per_modality"][m]["accuracy"] for r in runs]) for m in modalities]
        epochs = ", ".join(str(r["best_epoch"]) for r in runs)
        multimodal = percent_cell([r["test"]["multimodal"]["accuracy"] for r in runs])
        lines.append(f"| {label} | {multimodal} | {' | '.join(per)} | {epochs} |")
    teachers = [r["teachers"] for runs in results.values() for r in runs if r["teachers"]]
    if teachers:
        lines.append(f"| teachers | - | {' | '.join(percent_cell([teachers[0][m]['accuracy']]) for m in modalities)} | - |")
    table = "\n".join(lines)
    print(table)
    write_summary(args.out, table, results)


if __name__ == "__main__":
    main()
