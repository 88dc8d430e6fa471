"""Pretrained vs from-scratch encoders on mfeat pix + mor: what a pretrained strong encoder does to imbalance and G²D.

The pix encoder (the MLP of configs/mfeat.yaml) is pretrained on MNIST digits, a different
source of handwritten digits that shares no row with mfeat: each MNIST digit is cropped to its
bounding box and averaged down to mfeat's 15 x 16 pix grid with values 0..6, the way the UCI
pix view was made from its own scans. The pretraining is an ordinary ``g2d train`` run of one
modality (a CSV of ``pix:<i>`` columns), and its best checkpoint's ``encoders.pix.`` tensors
are the weights file. Then, for each condition (``scratch``; ``pretrained``: fine-tuned from
the file; ``frozen``: the file's encoder kept fixed), the first run trains the condition's
teachers (which start from the same weights as the students, as teacher_model_config copies
the encoder; shared by the condition's methods and seeds, as in methods_table.py), then each
seed trains each method. Writes ``OUT/summary.md`` and ``OUT/results.json`` after every run, from every
finished run under OUT (finished runs are skipped, so several processes may share OUT once
the pretraining is done).

    python benchmarks/pretrained.py --mnist ../shared/data/mnist --seeds 0 1 2 --out runs/pretrained
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
from pathlib import Path

import numpy as np
from PIL import Image

from g2d.config import load_config
from g2d.data import load_dataset
from g2d.results.tables import mean_std, percent_cell, write_summary
from g2d.runs.experiment import run

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "mfeat.yaml"
GRID = (15, 16)  # mfeat pix: 15 columns x 16 rows of 2 x 3 pixel counts (0..6)
CONDITIONS = ("scratch", "pretrained", "frozen")
METHODS = {"joint": "Joint-Train", "g2d": "G²D"}


def read_mnist(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """All 15,000 MNIST digits here: the official test set (IDX) and the 5,000 extra rows (CSV), ``[N, 28, 28]`` uint8."""
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz") as handle:
        images = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read(), np.uint8, offset=8)
    extra = np.loadtxt(gzip.open(folder / "mnist_5k.csv.gz"), delimiter=",", dtype=np.int64)
    images = np.concatenate([images, extra[:, :784].reshape(-1, 28, 28).astype(np.uint8)])
    return images, np.concatenate([labels, extra[:, 784]]).astype(np.int64)


def to_pix(image: np.ndarray) -> np.ndarray:
    """A digit cropped to its bounding box, box-averaged to the 15 x 16 grid and scaled to 0..6 counts."""
    rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    crop = Image.fromarray(image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
    small = np.asarray(crop.resize(GRID, Image.Resampling.BOX), dtype=np.float64)
    return np.rint(small / 255.0 * 6.0).reshape(-1)


def write_mnist_pix(mnist: Path, out: Path) -> Path:
    """The MNIST digits as a CSV of 240 ``pix:<i>`` columns and a label, for ``dataset.name=csv``."""
    index = out / "index.csv"
    if index.is_file():
        return index
    images, labels = read_mnist(mnist)
    out.mkdir(parents=True, exist_ok=True)
    with open(index, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f"pix:{i}" for i in range(GRID[0] * GRID[1])] + ["label"])
        for image, label in zip(images, labels):
            writer.writerow([f"{v:.0f}" for v in to_pix(image)] + [int(label)])
    return index


def pretrain(index: Path, out: Path, epochs: int, overrides: list[str]) -> tuple[Path, dict]:
    """Train the pix encoder on MNIST pix alone (batch 128, lr 0.05: 10,500 rows); returns its best checkpoint and metrics."""
    folder = out / "pretrain_mnist_pix"
    if not (folder / "metrics.json").is_file():
        run(load_config(CONFIG, [*overrides, "dataset.name=csv", f"dataset.root={index}", "dataset.modalities=[pix]",
                                 "method.name=joint", "smp.enabled=false", f"trainer.epochs={epochs}", "seed=0",
                                 "trainer.batch_size=128", "optim.lr=0.05", f"out={folder}"]))
    return folder / "checkpoints" / "best.safetensors", json.loads((folder / "metrics.json").read_text())


def condition_overrides(condition: str, weights: Path) -> list[str]:
    if condition == "scratch":
        return []
    frozen = ", freeze: true" if condition == "frozen" else ""
    return [f"model.encoders.pix={{hidden: [128], weights: {weights}, weights_prefix: encoders.pix.{frozen}}}"]


def collect(out: Path, conditions: list[str], methods: list[str]) -> dict[str, dict[str, list[dict]]]:
    """Every finished run under ``OUT/<condition>/seed<s>/<method>``, so runs of several processes add up."""
    results: dict[str, dict[str, list[dict]]] = {}
    for condition in conditions:
        for method in methods:
            for path in sorted((out / condition).glob(f"seed*/{method}/metrics.json")):
                results.setdefault(condition, {}).setdefault(method, []).append(json.loads(path.read_text()))
    return results


def table(results: dict[str, dict[str, list[dict]]]) -> str:
    """Test accuracy (%) per condition and method, each modality inside the model, its teacher, and mor's retention."""
    lines = ["| pix encoder | method | seeds | multimodal | pix inside | mor inside | pix teacher | mor teacher | "
             "mor inside / mor teacher |", "|" + " --- |" * 9]
    for condition, methods in results.items():
        for method, runs in methods.items():
            inside = {m: [r["test"]["per_modality"][m]["accuracy"] for r in runs] for m in ("pix", "mor")}
            teachers = {m: [r["teachers"][m]["accuracy"] for r in runs] for m in ("pix", "mor")}
            retention = [i / t for i, t in zip(inside["mor"], teachers["mor"])]
            lines.append(f"| {condition} | {METHODS[method]} | {', '.join(str(r['seed']) for r in runs)} | "
                         f"{percent_cell([r['test']['multimodal']['accuracy'] for r in runs])} | "
                         f"{percent_cell(inside['pix'])} | {percent_cell(inside['mor'])} | "
                         f"{percent_cell(teachers['pix'])} | {percent_cell(teachers['mor'])} | "
                         f"{mean_std(retention, digits=2)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", type=Path, required=True, help="folder with t10k-*-ubyte.gz and mnist_5k.csv.gz")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    index = write_mnist_pix(args.mnist, args.out / "mnist_pix")
    weights, pretraining = pretrain(index, args.out, args.pretrain_epochs, args.overrides)
    print(f"pretraining on MNIST pix: test accuracy {pretraining['test']['multimodal']['accuracy']:.3f}", flush=True)
    data = load_dataset(load_config(CONFIG, args.overrides).dataset)
    # Seeds outermost, so an interrupted measurement still holds whole seeds of every condition.
    for seed in args.seeds:
        for condition in args.conditions:
            for method in sorted(args.methods, key="g2d".__ne__):  # g2d trains the teachers joint then reports
                folder = args.out / condition / f"seed{seed}"
                if (folder / method / "metrics.json").is_file():
                    continue
                config = load_config(CONFIG, [*args.overrides, *condition_overrides(condition, weights),
                                              f"method.name={method}", f"seed={seed}", f"out={folder / method}",
                                              f"teachers.root={args.out / condition / 'teachers'}"])
                metrics = run(config, data)
                print(f"{condition} {method} seed {seed}: {json.dumps(metrics['test'])} "
                      f"teachers {json.dumps(metrics['teachers'])} ({metrics['wall_seconds']:.0f} s)", flush=True)
                report(args, pretraining)
    print(report(args, pretraining))


def report(args: argparse.Namespace, pretraining: dict) -> str:
    """The table of every finished run, written to ``OUT/summary.md`` (raw metrics to ``OUT/results.json``)."""
    results = collect(args.out, args.conditions, args.methods)
    summary = table(results)
    write_summary(args.out, summary, {"pretraining": pretraining, "runs": results})
    return summary


if __name__ == "__main__":
    main()
