"""The paper's Table 2 layout for any k-modality config: every combination of two or more modalities,
Joint-Train against G²D, multimodal and per-modality (inside the model) test accuracy, over seeds.

The runs are a ``g2d.runs.sweep`` (``OUT/<combination>_<method>/seed<s>``, finished runs skipped).
Teachers are trained once per seed and shared by every combination (a teacher sees one
modality, and the split does not depend on which modalities are chosen; the data fingerprint
in each teacher checks this). Writes ``OUT/summary.md`` and ``OUT/results.json``.

    python benchmarks/combinations.py configs/mfeat3.yaml --seeds 0 1 2 --out runs/mfeat3_table2
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from g2d.config import load_config
from g2d.data import load_dataset
from g2d.methods import METHODS
from g2d.results.tables import mean_std, method_label, write_summary
from g2d.runs.sweep import Point, run_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", default=["joint", "g2d"], help=f"from {', '.join(METHODS)}")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time, each in its own process")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides for every run")
    args = parser.parse_intermixed_args()
    base = load_config(args.config, args.overrides)
    data = load_dataset(base.dataset)
    modalities = list(data.modalities)
    combinations = [c for size in range(2, len(modalities) + 1) for c in itertools.combinations(modalities, size)]
    points = [Point(f"{'+'.join(c)}/{method}", [f"dataset.modalities=[{','.join(c)}]", f"method.name={method}"],
                    f"{'+'.join(c)}_{method}") for c in combinations for method in args.methods]
    by_label = run_sweep(args.config, args.overrides, points, args.seeds, args.out, workers=args.workers,
                         log=lambda line: print(line, flush=True))
    results: dict[str, dict[str, list[dict]]] = {}
    teachers: dict[int, dict[str, dict]] = {seed: {} for seed in args.seeds}
    for label, runs in by_label.items():
        name, method = label.split("/")
        results.setdefault(name, {})[method] = runs
        for metrics in runs:
            teachers[metrics["seed"]].update(metrics["teachers"])
    lines = ["| modalities | accuracy of | " + " | ".join(method_label(m) for m in args.methods) + " |",
             "|" + " --- |" * (len(args.methods) + 2)]
    for name, by_method in results.items():
        for part in [*name.split("+"), "multimodal"]:
            cells = []
            for method in args.methods:
                tests = [r["test"] for r in by_method[method]]
                scores = [t["multimodal"] if part == "multimodal" else t["per_modality"][part] for t in tests]
                cells.append(mean_std([score["accuracy"] for score in scores], 100.0))
            lines.append(f"| {name} | {part} | " + " | ".join(cells) + " |")
    for modality in modalities:
        scores = [teachers[seed][modality]["accuracy"] for seed in args.seeds if modality in teachers[seed]]
        if scores:
            lines.append(f"| teacher | {modality} alone | {mean_std(scores, 100.0)} |" + " |" * (len(args.methods) - 1))
    table = "\n".join(lines)
    print(table)
    write_summary(args.out, table, results)


if __name__ == "__main__":
    main()
