"""The report's figures, drawn with matplotlib (Agg backend, no display) as small PNG files.

Each function takes the report's groups (``{label: [RunRecord, ...]}``, see ``g2d.results.report``) and
returns a ``Figure`` or None when the runs hold nothing to draw.
"""

from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from g2d.results.tables import main_metric

DPI = 80
MODALITY_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


@functools.cache
def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display), imported on first use: importing it costs every
    g2d command about half a second, and only ``g2d report`` draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def integer_ticks(axis: Any) -> None:
    """Whole-number ticks on ``axis`` (epochs)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


@dataclass
class Figure:
    """A PNG written to ``file`` under the report folder, with the caption the page shows."""

    name: str
    file: str
    caption: str


def metric(groups: dict) -> tuple[str, str, float]:
    """The report's score for these runs' task (see ``g2d.results.tables.main_metric``)."""

    return main_metric(next(iter(groups.values()))[0].metrics["task"])


def modalities_of(groups: dict) -> list[str]:
    """The modalities every run shares (the report checks they do)."""
    return list(next(iter(groups.values()))[0].metrics["modalities"])


def analysed(groups: dict) -> list[str]:
    """The groups (model labels) with at least one analysed run (``g2d analyze`` was run on it)."""
    return [label for label, runs in groups.items() if any(r.analysis for r in runs)]


def model_colours(groups: dict) -> dict[str, Any]:
    """One colour per model, the same in every figure (tab10, or tab20 beyond ten models, so none repeats)."""
    palette = pyplot().get_cmap("tab10" if len(groups) <= 10 else "tab20")
    return {label: palette(i % palette.N) for i, label in enumerate(groups)}


def legend_beside(ax: Any) -> None:
    """The models' legend to the right of ``ax``, where a long list of models hides no curve."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def save(fig: Any, folder: Path, name: str, caption: str) -> Figure:
    """Write ``fig`` as ``folder/name.png`` at a small resolution and free it."""
    fig.tight_layout()
    fig.savefig(folder / f"{name}.png", dpi=DPI, bbox_inches="tight")
    pyplot().close(fig)
    return Figure(name, f"{name}.png", caption)


def mean_curve(runs: list, modality: str, column: str) -> tuple[list[float], list[float]]:
    """Epochs and the mean over runs of ``column`` for ``modality`` in their per-epoch tables."""
    values: dict[float, list[float]] = {}
    for run in runs:
        for row in run.epochs:
            if row["modality"] == modality and isinstance(row.get(column), float):
                values.setdefault(row["epoch"], []).append(row[column])
    epochs = sorted(values)
    return epochs, [statistics.mean(values[e]) for e in epochs]


def smp_window(runs: list) -> tuple[float, float, str] | None:
    """The epochs of SMP's prioritized phases in the first run with SMP, and who leads: (start, end, text)."""
    for run in runs:
        phased = [row for row in run.epochs if isinstance(row.get("smp_phase"), float) and row["smp_phase"] >= 0]
        if not phased:
            continue
        last = max(row["smp_phase"] for row in phased)
        window = [row for row in phased if row["smp_phase"] < last]
        if window:
            leaders = sorted({row["modality"] for row in window if row.get("smp_allowed") == 1.0})
            return min(r["epoch"] for r in window), max(r["epoch"] for r in window) + 1, " + ".join(leaders)
    return None


def curves(groups: dict, folder: Path) -> Figure | None:
    """Validation score and confidence per modality over epochs, one line per model, SMP window shaded."""
    modalities = modalities_of(groups)
    key, title, factor = metric(groups)
    fig, axes = pyplot().subplots(2, len(modalities), figsize=(4.8 * len(modalities), 6), squeeze=False)
    colours = model_colours(groups)
    drawn = False
    for column, m in enumerate(modalities):
        for row, (field, name, scale) in enumerate(((f"val_{key}", title, factor), ("val_confidence", "confidence", 1.0))):
            ax = axes[row][column]
            for label, runs in groups.items():
                epochs, values = mean_curve(runs, m, field)
                if epochs:
                    drawn = True
                    ax.plot(epochs, [scale * v for v in values], label=label, color=colours[label])
                    window = smp_window(runs)
                    if window:
                        ax.axvspan(window[0] - 0.5, window[1] - 0.5, color=colours[label], alpha=0.08)
            if row == 1:
                levels = {r["teacher_val_confidence"] for runs in groups.values() for run in runs for r in run.epochs
                          if r["modality"] == m and isinstance(r.get("teacher_val_confidence"), float)}
                if levels:
                    teacher = ax.axhline(statistics.mean(levels), color="black", linestyle="--", label=f"{m} teacher")
                    ax.legend(handles=[teacher], fontsize=8, loc="lower right")
            ax.set_title(f"{m} inside the model: validation {name}")
            ax.set_xlabel("epoch")
            integer_ticks(ax.xaxis)
            ax.grid(alpha=0.3)
    if not drawn:
        pyplot().close(fig)
        return None
    legend_beside(axes[0][-1])
    return save(fig, folder, "curves", "Per-modality validation score (top) and confidence (bottom) of each "
                "model over training, mean over seeds. Shaded: SMP's prioritized phase, in the colour of the "
                "model it applies to, when only the weakest modality's encoder learns; dashed: the teacher's "
                "confidence.")


def teacher_confidence(groups: dict, folder: Path) -> Figure | None:
    """Each teacher's validation confidence over its own training (the paper's Fig. 3)."""
    tables: dict[str, list[dict]] = {}
    for runs in groups.values():
        for run in runs:
            for m, rows in run.teacher_epochs.items():
                tables.setdefault(m, rows)
    if not tables:
        return None
    fig, ax = pyplot().subplots(figsize=(5.5, 3.5))
    for (m, rows), colour in zip(tables.items(), MODALITY_COLOURS):
        points = [(r["epoch"], r["val_confidence"]) for r in rows if isinstance(r.get("val_confidence"), float)]
        ax.plot([p[0] for p in points], [p[1] for p in points], color=colour, marker=".", label=f"{m} teacher")
    integer_ticks(ax.xaxis)
    ax.set_xlabel("teacher's training epoch")
    ax.set_ylabel("confidence (Eq. 5), validation")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, folder, "teacher_confidence", "Unimodal teachers' confidence over their training: the "
                "modality with the lower curve is the one SMP prioritizes.")


def analysis_values(runs: list, value: Any, modality: str) -> list[float]:
    """``value(analysis, modality)`` of each analysed run, where it is not None."""
    return [v for r in runs if r.analysis for v in [value(r.analysis, modality)] if v is not None]


def grouped_bars(groups: dict, folder: Path, name: str, value: Any, ylabel: str, caption: str,
                 reference: float | None = None, marker: tuple[Any, str] | None = None) -> Figure | None:
    """One bar per model and modality, mean over analysed seeds with the standard deviation as error bar;
    ``marker`` = (value function, legend text) draws a second mean per bar as a black tick."""
    modalities = modalities_of(groups)
    labels = analysed(groups)
    if not labels:
        return None
    fig, ax = pyplot().subplots(figsize=(max(5.0, 1.4 * len(labels) * len(modalities) / 2 + 2), 3.6))
    width = 0.8 / len(modalities)
    drawn = False
    for j, (m, colour) in enumerate(zip(modalities, MODALITY_COLOURS)):
        means, errors = [], []
        for label in labels:
            values = analysis_values(groups[label], value, m)
            means.append(statistics.mean(values) if values else 0.0)
            errors.append(statistics.stdev(values) if len(values) > 1 else 0.0)
            drawn = drawn or bool(values)
        positions = [i + (j - (len(modalities) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(positions, means, width, yerr=errors, color=colour, label=m, capsize=2)
        if marker is not None:
            ticks = [analysis_values(groups[label], marker[0], m) for label in labels]
            shown = [(x, statistics.mean(t)) for x, t in zip(positions, ticks) if t]
            ax.scatter([x for x, _ in shown], [y for _, y in shown], marker="_", s=400 * width, color="black",
                       linewidths=2, zorder=3, label=marker[1] if j == 0 else None)
    if not drawn:
        pyplot().close(fig)
        return None
    if reference is not None:
        ax.axhline(reference, color="black", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, folder, name, caption)


def probe(groups: dict, folder: Path) -> Figure | None:
    """Inside-the-model score beside the linear probe's, per modality and model."""
    modalities = modalities_of(groups)
    key, title, factor = metric(groups)
    labels = analysed(groups)
    if not labels:
        return None
    fig, axes = pyplot().subplots(1, len(modalities), figsize=(4.4 * len(modalities), 3.6), squeeze=False)
    for ax, m in zip(axes[0], modalities):
        for offset, (kind, colour) in zip((-0.2, 0.2), (("inside", "tab:gray"), ("probe", "tab:green"))):
            values = [[factor * r.analysis["per_modality"][m][kind][key] for r in groups[label] if r.analysis]
                      for label in labels]
            ax.bar([i + offset for i in range(len(labels))], [statistics.mean(v) for v in values], 0.4,
                   yerr=[statistics.stdev(v) if len(v) > 1 else 0.0 for v in values], color=colour,
                   label="inside the model" if kind == "inside" else "linear probe on frozen encoder", capsize=2)
        teachers = [factor * r.analysis["per_modality"][m]["teacher"][key] for runs in groups.values() for r in runs
                    if r.analysis and "teacher" in r.analysis["per_modality"][m]]
        if teachers:
            ax.axhline(statistics.mean(teachers), color="black", linestyle="--", label="teacher alone")
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{m}: test {title}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return save(fig, folder, "probe", "Each modality inside the model (grey) and a linear probe on its frozen "
                "encoder (green): a probe well above 'inside' means the encoder holds information the model's "
                "head does not use.")


def missing(groups: dict, folder: Path) -> Figure | None:
    """Score with each subset of modalities present, one bar group per subset."""
    key, title, factor = metric(groups)
    labels = analysed(groups)
    if not labels:
        return None
    first = next(r.analysis for r in groups[labels[0]] if r.analysis)
    subsets = [tuple(row["present"]) for row in first["subsets"]]
    fig, ax = pyplot().subplots(figsize=(max(5.0, 1.2 * len(subsets) + 2), 3.6))
    width = 0.8 / len(labels)
    colours = model_colours(groups)
    for j, label in enumerate(labels):
        values = []
        for subset in subsets:
            found = [factor * row[key] for r in groups[label] if r.analysis
                     for row in r.analysis["subsets"] if tuple(row["present"]) == subset]
            values.append(statistics.mean(found) if found else 0.0)
        ax.bar([i + (j - (len(labels) - 1) / 2) * width for i in range(len(subsets))], values, width, label=label,
               color=colours[label])
    ax.set_xticks(range(len(subsets)), [" + ".join(s) if s else "none (label prior)" for s in subsets], fontsize=8)
    ax.set_xlabel("modalities present at test time")
    ax.set_ylabel(f"test {title}")
    ax.grid(axis="y", alpha=0.3)
    legend_beside(ax)
    return save(fig, folder, "missing", "Test score with only some modalities present (the others absent), mean "
                "over seeds.")


def noise(groups: dict, folder: Path) -> Figure | None:
    """Score against the level of Gaussian noise on one modality's input, one panel per modality."""
    modalities = modalities_of(groups)
    key, title, factor = metric(groups)
    labels = analysed(groups)
    if not labels:
        return None
    fig, axes = pyplot().subplots(1, len(modalities), figsize=(4.2 * len(modalities), 3.4), squeeze=False)
    colours = model_colours(groups)
    for ax, m in zip(axes[0], modalities):
        for label in labels:
            by_sigma: dict[float, list[float]] = {}
            for r in groups[label]:
                for row in (r.analysis or {}).get("noise", []):
                    if row["modality"] == m:
                        by_sigma.setdefault(row["sigma"], []).append(factor * row[key])
            sigmas = sorted(by_sigma)
            ax.plot(sigmas, [statistics.mean(by_sigma[s]) for s in sigmas], marker="o", label=label,
                    color=colours[label])
        ax.set_title(f"noise on {m}")
        ax.set_xlabel("noise std (units of the input's std)")
        ax.set_ylabel(f"multimodal test {title}")
        ax.grid(alpha=0.3)
    legend_beside(axes[0][-1])
    return save(fig, folder, "noise", "Multimodal test score as Gaussian noise of growing strength corrupts one "
                "modality's input, mean over seeds.")


def gap(groups: dict, folder: Path) -> Figure | None:
    """PCA and t-SNE of the modalities' features, one row per model (its first analysed seed)."""
    chosen = [(label, next((r for r in runs if r.embedding and r.analysis), None)) for label, runs in groups.items()]
    chosen = [(label, run) for label, run in chosen if run is not None]
    if not chosen:
        return None
    modalities = modalities_of(groups)
    fig, axes = pyplot().subplots(len(chosen), 2, figsize=(8, 3.4 * len(chosen)), squeeze=False)
    for row, (label, run) in enumerate(chosen):
        distance = " ".join(f"{v:.2f}" for v in (run.analysis.get("modality_gap") or {}).values())
        for column, method in enumerate(("pca", "tsne")):
            ax = axes[row][column]
            for m, colour in zip(modalities, MODALITY_COLOURS):
                points = [p for p in run.embedding if p["modality"] == m]
                ax.scatter([p[f"{method}_1"] for p in points], [p[f"{method}_2"] for p in points], s=4,
                           color=colour, label=m, alpha=0.6)
            ax.set_title(f"{label}: {'PCA' if method == 'pca' else 't-SNE'}, gap {distance}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].legend(fontsize=8, markerscale=3)
    return save(fig, folder, "gap", "Encoder features of the same test inputs, by modality, in 2-D (left PCA, right "
                "t-SNE); 'gap' is the distance between the modalities' centroids on the unit sphere.")


def report_figures(groups: dict, folder: Path) -> list[Figure]:
    """Every figure the runs hold data for, written to ``folder``."""
    key, title, factor = metric(groups)
    drawn = [
        curves(groups, folder),
        teacher_confidence(groups, folder),
        grouped_bars(groups, folder, "confidence_ratio",
                     lambda a, m: a["per_modality"][m].get("confidence_ratio"), "confidence ratio (student / teacher)",
                     "Confidence ratio (paper Fig. 6): each modality's confidence inside the model over its teacher's "
                     "on the test split; 1 means as confident as the modality alone.", reference=1.0),
        grouped_bars(groups, folder, "alignment", lambda a, m: a["per_modality"][m].get("alignment"),
                     "mean cosine(student, teacher)", "Feature alignment (paper Fig. 5): mean cosine similarity "
                     "between the student's and the teacher's encoder features of the same test input. Black "
                     "ticks: the same for the untrained student; a high tick means the student's encoder started "
                     "from its teacher's initial weights (same seed), so the bar above it says little about "
                     "distillation.",
                     marker=(lambda a, m: a["per_modality"][m].get("alignment_at_start"), "before training")),
        probe(groups, folder),
        grouped_bars(groups, folder, "shapley", lambda a, m: factor * a["shapley"][m], f"Shapley value ({title})",
                     "Shapley value of each modality: its average contribution to the multimodal test score, "
                     "from evaluations with modalities absent.", reference=0.0),
        missing(groups, folder),
        noise(groups, folder),
        gap(groups, folder),
    ]
    return [figure for figure in drawn if figure is not None]
