"""Tables of runs: test scores of each method and teacher, mean ± std over seeds or folds.

Plain formatting with no I/O beyond a benchmark's summary files, shared by ``g2d report``, its
figures, ``g2d sweep``, the demo and the benchmark scripts.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any


def metric_name(task: str) -> str:
    return "accuracy" if task == "classification" else "mape"


def format_value(value: float | None, task: str) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if task == "classification" else f"{value:.2f}"


def results_table(runs: dict[str, dict]) -> str:
    """One row per run (``{label: metrics.json}``): test multimodal and per-modality scores.

    Teachers' own test scores come as a last row from the first run that reports them.
    Classification scores are accuracy in percent; regression scores are MAPE in percent.
    The last column is the epoch whose weights were tested (the best on validation, counted from 0;
    ties keep the earliest), of the epochs trained.
    """
    first = next(iter(runs.values()))
    task, modalities = first["task"], first["modalities"]
    name = metric_name(task)
    header = ["method", "multimodal", *modalities, "best epoch"]
    rows = []
    for label, metrics in runs.items():
        per_modality = metrics["test"]["per_modality"]
        label = f"{label} {OPTIMISTIC_MARK}" if is_optimistic(metrics) else label
        rows.append([label, format_value(metrics["test"]["multimodal"][name], task),
                     *(format_value(per_modality.get(m, {}).get(name), task) for m in modalities),
                     f"{metrics.get('best_epoch', '?')} of {metrics.get('epochs', '?')}"])
    teachers = next((m["teachers"] for m in runs.values() if m.get("teachers")), {})
    if teachers:
        rows.append(["teachers", "-", *(format_value(teachers.get(m, {}).get(name), task) for m in modalities), "-"])
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    unit = "test accuracy (%)" if task == "classification" else "test MAPE (%)"
    note = f"\n{OPTIMISTIC_NOTE}" if any(is_optimistic(m) for m in runs.values()) else ""
    return (f"{first['dataset']}: {unit}; per-modality columns are each modality inside the model; best epoch is "
            "the validation-best epoch tested (from 0, ties keep the earliest)\n"
            + "\n".join(lines) + note)


OPTIMISTIC_MARK = "(select=test, optimistic)"
OPTIMISTIC_NOTE = ("select=test: the epoch was chosen on the test split (the authors' rule), so its test score "
                   "is optimistic")


def is_optimistic(metrics: dict) -> bool:
    """Whether a run kept the epoch with the best test score (``trainer.select=test``)."""
    return bool(metrics.get("selection", {}).get("optimistic"))


def method_label(name: str) -> str:
    """The paper's name of method ``name`` from its record (``G²D``, ``Joint-Train``); the name itself otherwise."""
    from g2d.methods import METHODS

    return METHODS[name].label if name in METHODS else name


def summary_metrics(task: str) -> list[tuple[str, str, float]]:
    """``(key, column title, factor)`` of the test metrics a summary shows for ``task``."""
    if task == "classification":
        return [("accuracy", "accuracy (%)", 100.0)]
    return [("mape", "MAPE (%)", 1.0), ("r2", "R²", 1.0)]


def mean_std(values: list[float], factor: float = 1.0, digits: int | None = None) -> str:
    """``mean ± std`` (sample std, n - 1) of ``values * factor``; just the mean for a single value.

    ``digits`` fixes the decimals; by default 2 below 10 and 1 from there on.
    """
    scaled = [factor * v for v in values]
    mean = statistics.mean(scaled)
    if digits is None:
        digits = 2 if abs(mean) < 10 else 1
    if len(scaled) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(scaled):.{digits}f}"


def percent_cell(fractions: list[float]) -> str:
    """Accuracies (fractions) over seeds as a percentage cell with one decimal: ``97.8 ± 0.4``."""
    return mean_std(fractions, 100.0, digits=1)


def write_summary(out: Path, table: str, results: Any) -> None:
    """A benchmark's markdown table and its raw results: ``OUT/summary.md`` and ``OUT/results.json``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))


def fold_table(results: dict[str, list[dict]]) -> str:
    """A markdown table of ``crossval.run_folds`` results: mean ± std over folds of the test metrics.

    One row per teacher (each single modality), then one per method with its multimodal score
    and each modality's own head inside the model.
    """
    methods = [name for name in results if name != "teachers"]
    first = results[methods[0]][0]
    modalities, metrics = first["modalities"], summary_metrics(first["task"])
    header = ["model", *(title for _, title, _ in metrics),
              *(f"{m} inside: {title}" for m in modalities for _, title, _ in metrics)]
    rows = []
    for modality in modalities:
        scores = [mean_std([fold[modality][key] for fold in results["teachers"]], factor) for key, _, factor in metrics]
        rows.append([f"{modality} alone (teacher)", *scores, *(["-"] * len(modalities) * len(metrics))])
    for method in methods:
        runs = results[method]
        rows.append([
            method_label(method),
            *(mean_std([r["test"]["multimodal"][key] for r in runs], factor) for key, _, factor in metrics),
            *(mean_std([r["test"]["per_modality"][m][key] for r in runs], factor)
              for m in modalities for key, _, factor in metrics),
        ])
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main_metric(task: str) -> tuple[str, str, float]:
    """``(key, title, factor)`` of the score a report shows: accuracy in percent, or MSE."""
    return ("accuracy", "accuracy (%)", 100.0) if task == "classification" else ("mse", "MSE", 1.0)


def cell(values: list[float], factor: float) -> str:
    """``mean ± std`` of ``values * factor`` (one decimal for percentages, three otherwise), ``-`` when empty."""
    return mean_std(values, factor, digits=1 if factor == 100.0 else 3) if values else "-"
