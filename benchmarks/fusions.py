"""Run the Table 5 analogue: G²D (and optionally Joint-Train) with each fusion module, over seeds.

Prints a markdown table of test accuracy (mean ± std over seeds) for the multimodal model and
each modality inside it (A.5's per-modality rule of each fusion, see docs/models.md), and
writes it to ``OUT/summary.md``. The runs are a ``g2d.runs.sweep`` (``OUT/<method>_<fusion>/seed<s>``):
teachers do not depend on the fusion, so each seed trains them once and every fusion and method
of that seed uses them; finished runs are skipped.

    python benchmarks/fusions.py configs/mfeat.yaml --seeds 0 1 2 --methods g2d joint --out runs/fusions_mfeat
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from g2d.models import FUSIONS
from g2d.results.tables import percent_cell, write_summary
from g2d.runs.sweep import Point, run_sweep

# The paper's Table 5 order; late fusion, its default, last.
ORDER = ["sum", "concat", "film", "gated", "cross_attention", "late"]
METHODS = {"g2d": "G²D", "joint": "Joint-Train"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fusions", nargs="+", default=ORDER, help="subset of fusion names")
    parser.add_argument("--methods", nargs="+", default=["g2d"], help="subset of: " + ", ".join(METHODS))
    parser.add_argument("--workers", type=int, default=1, help="runs at a time, each in its own process")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    for name in args.fusions:
        if name not in FUSIONS:
            parser.error(f"unknown fusion {name!r}; fusions: {', '.join(FUSIONS)}")
    for name in args.methods:
        if name not in METHODS:
            parser.error(f"unknown method {name!r}; methods: {', '.join(METHODS)}")
    points = [Point(f"{method}/{fusion}", [f"method.name={method}", f"model.fusion={fusion}"], f"{method}_{fusion}")
              for method in args.methods for fusion in args.fusions]
    by_label = run_sweep(args.config, [*args.overrides, "trainer.progress=false"], points, args.seeds, args.out,
                         workers=args.workers, log=lambda line: print(line, flush=True))
    results = {tuple(label.split("/")): runs for label, runs in by_label.items()}
    modalities = next(iter(results.values()))[0]["modalities"]
    lines = [f"| fusion | method | multimodal | {' | '.join(modalities)} | wall s/run |",
             "|" + " --- |" * (len(modalities) + 4)]
    for fusion in args.fusions:
        for method in args.methods:
            runs = results[(method, fusion)]
            per = [percent_cell([r["test"]["per_modality"][m]["accuracy"] for r in runs]) for m in modalities]
            wall = statistics.mean(r["wall_seconds"] for r in runs)
            multimodal = percent_cell([r["test"]["multimodal"]["accuracy"] for r in runs])
            lines.append(f"| {fusion} | {METHODS[method]} | {multimodal} | {' | '.join(per)} | {wall:.1f} |")
    by_seed = {r["seed"]: r["teachers"] for runs in results.values() for r in runs if r["teachers"]}
    if by_seed:
        per = [percent_cell([t[m]["accuracy"] for t in by_seed.values()]) for m in modalities]
        lines.append(f"| - | teachers | - | {' | '.join(per)} | - |")
    table = "\n".join(lines)
    print(table)
    write_summary(args.out, table, {f"{m}/{f}": r for (m, f), r in results.items()})


if __name__ == "__main__":
    main()
