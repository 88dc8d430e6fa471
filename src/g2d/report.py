"""Plain-text tables of runs: multimodal and per-modality scores of each method and teacher."""

from __future__ import annotations


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
    """
    first = next(iter(runs.values()))
    task, modalities = first["task"], first["modalities"]
    name = metric_name(task)
    header = ["method", "multimodal", *modalities]
    rows = []
    for label, metrics in runs.items():
        per_modality = metrics["test"]["per_modality"]
        rows.append([label, format_value(metrics["test"]["multimodal"][name], task),
                     *(format_value(per_modality.get(m, {}).get(name), task) for m in modalities)])
    teachers = next((m["teachers"] for m in runs.values() if m.get("teachers")), {})
    if teachers:
        rows.append(["teachers", "-", *(format_value(teachers.get(m, {}).get(name), task) for m in modalities)])
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    unit = "test accuracy (%)" if task == "classification" else "test MAPE (%)"
    return f"{first['dataset']}: {unit}; per-modality columns are each modality inside the model\n" + "\n".join(lines)
