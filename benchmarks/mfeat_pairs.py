"""Measure modality imbalance under Joint-Train for every pair of mfeat views.

For each pair: each view's teacher accuracy and its accuracy inside the joint model (test),
with the demo's settings. Only Joint-Train is run, so choosing the demo's pair from this
table cannot favour G²D.

    python benchmarks/mfeat_pairs.py --out runs/mfeat_pairs
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from g2d.config import load_config
from g2d.data import load_dataset
from g2d.data.mfeat import VIEWS
from g2d.runs.demo import DEMO_SETTINGS
from g2d.runs.experiment import run
from g2d.training.teachers import ensure_teachers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = [s for s in DEMO_SETTINGS if not s.startswith(("dataset.modalities", "seed"))]
    rows = []
    for a, b in itertools.combinations(VIEWS, 2):
        config = load_config(None, [*settings, f"dataset.modalities=[{a},{b}]", "method.name=joint",
                                    f"seed={args.seed}", f"out={args.out / f'{a}_{b}'}",
                                    f"teachers.root={args.out / 'teachers'}", "trainer.progress=false"])
        data = load_dataset(config.dataset)
        ensure_teachers(config, data, lambda cfg, m: run(cfg, data.select([m]), teacher_of=m))
        metrics = run(config, data)
        teachers = metrics["teachers"]
        gaps = {m: teachers[m]["accuracy"] - metrics["test"]["per_modality"][m]["accuracy"] for m in (a, b)}
        weak = max(gaps, key=gaps.get)
        rows.append((gaps[weak], f"| {a} + {b} | {100 * metrics['test']['multimodal']['accuracy']:.1f} | "
                     + " | ".join(f"{m}: {100 * metrics['test']['per_modality'][m]['accuracy']:.1f} "
                                  f"(teacher {100 * teachers[m]['accuracy']:.1f})" for m in (a, b))
                     + f" | {weak} {100 * gaps[weak]:.1f} |"))
        print(rows[-1][1], flush=True)
    print("| pair | joint multimodal | view a in joint (teacher) | view b in joint (teacher) | largest gap |")
    print("| --- | --- | --- | --- | --- |")
    for _, row in sorted(rows, reverse=True):
        print(row)


if __name__ == "__main__":
    main()
