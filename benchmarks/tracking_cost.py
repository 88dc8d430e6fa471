"""Cost of experiment tracking per epoch: one ``Tracking.epoch`` call per backend of ``trainer.loggers``,
against no backend, on one recorded epoch of a run (its history.json).

Backends are measured interleaved (round r times every backend once, in turn) so a busy machine slows
them alike. Each backend logs into its own scratch run folder (MLflow: a SQLite store, W&B: offline).
Run: ``python benchmarks/tracking_cost.py --history RUN/history.json [--epochs 40 --rounds 5]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from g2d.config import load_config
from g2d.training.tracking import Tracking, epoch_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=Path, required=True, help="a run's history.json (its first record is logged)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs logged per backend and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    record = json.loads(args.history.read_text())[0]
    names = ["none", "tensorboard", "csv", "mlflow", "wandb"]
    seconds: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for name in names:
                folder = Path(scratch) / f"{name}{round_}" / "run"
                folder.mkdir(parents=True)
                config = load_config(None, [f"trainer.loggers=[{'' if name == 'none' else name}]", f"out={folder}"])
                with Tracking().start(config, folder) as tracking:
                    started = time.perf_counter()
                    for epoch in range(args.epochs):
                        tracking.epoch({**record, "epoch": epoch})
                    seconds[name].append((time.perf_counter() - started) / args.epochs)
    print(f"per-epoch cost of Tracking.epoch ({len(epoch_metrics(record))} numbers); "
          f"median over {args.rounds} rounds of {args.epochs} epochs")
    for name in names:
        values = [1000 * s for s in seconds[name]]
        print(f"{name:12s} {statistics.median(values):8.3f} ms/epoch  (min {min(values):.3f}, max {max(values):.3f})")


if __name__ == "__main__":
    main()
