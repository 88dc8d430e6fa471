"""K-fold cross-validation: one config run on every fold, with its teachers and the chosen methods.

Fold ``i`` sets ``dataset.folds=K dataset.fold=i``: test is that fold of a seeded partition,
validation is carved from the other folds, so model selection never sees the test fold. Each
fold trains its own teachers (their data differ), in ``OUT/fold<i>/teachers``. The runs are a
``g2d.runs.sweep`` (``OUT/fold<i>/<method>/seed<s>``), so finished folds are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from g2d.config import load_config
from g2d.errors import G2DError
from g2d.runs.sweep import Point, run_sweep


def run_folds(
    config_path: Path | None,
    overrides: list[str],
    folds: int,
    out: Path,
    methods: list[str],
    log: Callable[[str], None] = print,
    workers: int = 1,
) -> dict:
    """Teachers and ``methods`` on every fold; ``{"teachers": [per fold {m: test metrics}], method: [metrics.json]}``."""
    if folds < 2:
        raise G2DError(f"--folds: cross-validation needs at least 2 folds, got {folds}")
    if not methods:
        raise G2DError("--methods: give at least one method")
    seed = load_config(config_path, overrides).seed
    points = [Point(f"fold{fold}/{method}", [f"dataset.folds={folds}", f"dataset.fold={fold}", f"method.name={method}",
                                              f"teachers.root={out / f'fold{fold}' / 'teachers'}"], f"fold{fold}/{method}")
              for fold in range(folds) for method in methods]
    runs = run_sweep(config_path, overrides, points, [seed], out, workers=workers, all_teachers=True, log=log)
    results: dict[str, list[dict]] = {"teachers": [runs[f"fold{fold}/{methods[0]}"][0]["teachers"] for fold in range(folds)]}
    for method in methods:
        results[method] = [runs[f"fold{fold}/{method}"][0] for fold in range(folds)]
    return results
