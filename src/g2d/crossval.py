"""K-fold cross-validation: one config run on every fold, with its teachers and the chosen methods.

Fold ``i`` sets ``dataset.folds=K dataset.fold=i``: test is that fold of a seeded partition,
validation is carved from the other folds, so model selection never sees the test fold. Each
fold trains its own teachers (their data differ), in ``OUT/fold<i>/teachers``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from g2d.config import load_config
from g2d.data import load_dataset
from g2d.errors import G2DError
from g2d.experiment import run
from g2d.teachers import ensure_teachers, teacher_summary


def run_folds(
    config_path: Path | None,
    overrides: list[str],
    folds: int,
    out: Path,
    methods: list[str],
    log: Callable[[str], None] = print,
) -> dict:
    """Teachers and ``methods`` on every fold; ``{"teachers": [per fold {m: test metrics}], method: [metrics.json]}``."""
    if folds < 2:
        raise G2DError(f"--folds: cross-validation needs at least 2 folds, got {folds}")
    results: dict[str, list[dict]] = {"teachers": [], **{method: [] for method in methods}}
    for fold in range(folds):
        folder = out / f"fold{fold}"
        base = [*overrides, f"dataset.folds={folds}", f"dataset.fold={fold}", f"teachers.root={folder / 'teachers'}"]
        config = load_config(config_path, base)
        data = load_dataset(config.dataset)
        teachers = ensure_teachers(config, data, lambda cfg, m: run(cfg, data.select([m]), teacher_of=m))
        results["teachers"].append(teacher_summary(teachers))
        for method in methods:
            metrics = run(load_config(config_path, [*base, f"method.name={method}", f"out={folder / method}"]), data)
            results[method].append(metrics)
            log(f"fold {fold} {method}: test {metrics['test']['multimodal']}")
    return results
