"""K-fold cross-validation of one config: teachers (each modality alone), Joint-Train and G²D per fold.

Prints a markdown table of test metrics, mean ± std (sample std) over folds: MAPE (%) and R²
for regression, accuracy for classification; writes it to ``OUT/summary.md`` and every
fold's metrics to ``OUT/results.json``.

    python benchmarks/kfold.py configs/houses.yaml --folds 5 --out runs/kfold_houses
    python benchmarks/kfold.py configs/houses.yaml --folds 5 --out runs/kfold_houses trainer.epochs=20 --methods joint g2d umt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from g2d.errors import G2DError
from g2d.methods import METHODS
from g2d.results.tables import fold_table, write_summary
from g2d.runs.crossval import run_folds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", default=["joint", "g2d"], help=f"from {', '.join(METHODS)}")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time, each in its own process")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides for every run")
    args = parser.parse_intermixed_args()
    unknown = [name for name in args.methods if name not in METHODS]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r} (put key=value overrides before --methods); "
                     f"methods: {', '.join(METHODS)}")
    try:
        results = run_folds(args.config, args.overrides, args.folds, args.out, args.methods,
                            log=lambda line: print(line, flush=True), workers=args.workers)
    except G2DError as exc:
        parser.exit(2, f"kfold: error: {exc}\n")
    table = fold_table(results)
    print(table)
    write_summary(args.out, table, results)


if __name__ == "__main__":
    main()
