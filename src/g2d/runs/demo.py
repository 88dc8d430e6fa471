"""``g2d demo``: teachers, Joint-Train and G²D on an imbalanced pair of embedded mfeat views.

The pair (``pix`` + ``mor``) was chosen before any G²D run, from a joint-training probe that
showed the strongest imbalance among the pairs tried: inside the joint model the ``mor``
head falls far below the ``mor`` teacher. See docs/results.md for the measured table.
"""

from __future__ import annotations

from pathlib import Path

from g2d.config import load_config
from g2d.data import load_dataset
from g2d.runs.experiment import run
from g2d.results.tables import results_table
from g2d.runs.runfolder import make_folder

DEMO_SETTINGS = [
    "dataset.name=mfeat",
    "dataset.modalities=[pix,mor]",
    "model.fusion=late",
    "model.encoder.hidden=[128]",
    "optim.lr=0.01",
    "trainer.batch_size=16",
    "trainer.epochs=60",
    "seed=0",
]


def demo(out: Path, extra: list[str] | None = None) -> str:
    """Run teachers, Joint-Train and G²D into ``out``; returns the printed table."""
    make_folder(out, "--out")
    results = {}
    data = None
    for label, method in (("joint", "joint"), ("g2d", "g2d")):
        config = load_config(None, [*DEMO_SETTINGS, f"method.name={method}", f"out={out / label}",
                                    f"teachers.root={out}", "trainer.resume=true", *(extra or [])])
        # A second demo into the same folder shows the finished runs (or finishes interrupted ones).
        config.trainer.resume = not config.trainer.overwrite
        data = data or load_dataset(config.dataset)
        results[label] = run(config, data)
    return results_table(results)
