"""``g2d demo``: teachers, Joint-Train and G²D on an imbalanced pair of embedded mfeat views.

The pair (``pix`` + ``mor``) was chosen before any G²D run, from a joint-training probe that
showed the strongest imbalance among the pairs tried: inside the joint model the ``mor``
head falls far below the ``mor`` teacher. See docs/results.md for the measured table.
"""

from __future__ import annotations

from pathlib import Path

from g2d.config import load_config
from g2d.data import load_dataset
from g2d.folders import check_target, mark
from g2d.results.tables import results_table
from g2d.runs.check import preflight
from g2d.runs.experiment import run
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
    configs = {}
    for method in ("joint", "g2d"):
        config = load_config(None, [*DEMO_SETTINGS, f"method.name={method}", f"out={out / method}",
                                    f"teachers.root={out}", "trainer.resume=true", *(extra or [])])
        # A second demo into the same folder shows the finished runs (or finishes interrupted ones).
        config.trainer.resume = not config.trainer.overwrite
        configs[method] = preflight(config)
    # Like a sweep, a demo continues its own folder; any other kind of folder is refused before anything is written.
    check_target(out, "demo", "--out", overwrite=False, reuse=True)
    make_folder(out, "--out")
    mark(out, "demo")
    data = load_dataset(configs["joint"].config.dataset)
    return results_table({label: run(checked, data) for label, checked in configs.items()})
