"""``g2d report``: a self-contained HTML page, PNG figures and a Markdown file comparing run folders."""

from __future__ import annotations

import base64
import csv
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from g2d.errors import G2DError
from g2d.folders import building, check_target
from g2d.results.tables import OPTIMISTIC_MARK, OPTIMISTIC_NOTE, cell, is_optimistic, main_metric, method_label



@dataclass
class RunRecord:
    """What the report reads from one run folder."""

    run_dir: Path
    metrics: dict
    config: dict
    epochs: list[dict]
    analysis: dict | None
    embedding: list[dict]
    teacher_epochs: dict[str, list[dict]]


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV file with numeric cells as floats (empty cells stay empty strings)."""
    if not path.is_file():
        return []

    def parse(value: str) -> Any:
        try:
            return float(value)
        except ValueError:
            return value

    with open(path, newline="") as handle:
        return [{key: parse(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def read_run(run_dir: Path) -> RunRecord:
    """A run folder's metrics, config, per-epoch table, analysis and its teachers' per-epoch tables."""
    from omegaconf import OmegaConf

    from g2d.config import flatten, load_config
    from g2d.io import read_metrics
    from g2d.results.analysis import read_analysis, stale_analysis
    from g2d.training.teachers import teacher_dir

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise G2DError(f"run folder not found: {run_dir}")
    metrics = read_metrics(run_dir)
    if metrics.get("method") == "teacher":
        raise G2DError(f"{run_dir}: a teacher's folder; report the multimodal runs that use it")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise G2DError(f"config file not found: {config_path}")
    config = load_config(config_path, [f"out={run_dir}"])
    epochs = read_csv(run_dir / "epochs.csv")
    if not epochs:
        epochs = epochs_from_history(run_dir / "history.json", metrics["modalities"])
    teacher_epochs = {m: read_csv(teacher_dir(config, m) / "epochs.csv") for m in metrics["modalities"]}
    flat = flatten(OmegaConf.to_container(OmegaConf.structured(config), resolve=True))
    analysis = read_analysis(run_dir)
    stale = stale_analysis(run_dir, analysis) if analysis is not None else None
    if stale:
        raise G2DError(stale)
    return RunRecord(run_dir, metrics, flat, epochs, analysis,
                     read_csv(run_dir / "analysis" / "embedding.csv"), {m: r for m, r in teacher_epochs.items() if r})


def epochs_from_history(path: Path, modalities: list[str]) -> list[dict]:
    """Per-epoch rows from ``history.json`` for runs made before ``epochs.csv`` existed (no SMP columns)."""
    if not path.is_file():
        return []
    rows = []
    for record in json.loads(path.read_text()):
        for m in modalities:
            rows.append({"epoch": record["epoch"], "modality": m, "smp_phase": -1.0,
                         **{f"val_{k}": v for k, v in record["val"]["per_modality"][m].items()}})
    return rows


def run_label(metrics: dict) -> str:
    """``Joint-Train``, ``Joint-Train + SMP``, ``G²D``, ``G²D (no SMP)``: the method, and SMP where it
    differs from the method's default."""
    from g2d.methods import METHODS

    name = metrics["method"]
    label = method_label(name)
    default = METHODS[name].smp_by_default if name in METHODS else False
    enabled = bool(metrics.get("smp", {}).get("enabled"))
    if enabled != default:
        label += " + SMP" if enabled else " (no SMP)"
    return f"{label} {OPTIMISTIC_MARK}" if is_optimistic(metrics) else label


def group_runs(records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs sharing a configuration (the keys whose role a report compares: not the seed, the machine, paths or
    tracking) form one group, labelled by method."""
    from g2d.config import role_of

    groups: dict[tuple, list[RunRecord]] = {}
    for record in records:
        key = tuple(sorted((k, repr(v)) for k, v in record.config.items() if role_of(k).report))
        groups.setdefault(key, []).append(record)
    labelled: dict[str, list[RunRecord]] = {}
    for runs in groups.values():
        label = run_label(runs[0].metrics)
        if label in labelled:
            label = f"{label} [{runs[0].run_dir.parent.name}/{runs[0].run_dir.name}]"
        labelled[label] = runs
    return labelled


def table1_rows(groups: dict[str, list[RunRecord]]) -> tuple[list[str], list[list[str]]]:
    """Table 1's layout: a row per teacher (that modality alone), then each method's multimodal and
    per-modality test scores inside the model, mean ± std over the group's seeds."""
    first = next(iter(groups.values()))[0].metrics
    modalities, task = first["modalities"], first["task"]
    key, title, factor = main_metric(task)
    header = ["model", "seeds", f"multimodal {title}", *(f"{m} {title}" for m in modalities)]
    rows = []
    for m in modalities:
        teachers = {json.dumps(r.metrics["teachers"][m], sort_keys=True): r.metrics["teachers"][m][key]
                    for runs in groups.values() for r in runs if m in r.metrics.get("teachers", {})}
        if teachers:
            rows.append([f"{m} alone (teacher)", str(len(teachers)), "-",
                         *(cell(list(teachers.values()), factor) if n == m else "-" for n in modalities)])
    for label, runs in groups.items():
        rows.append([label, str(len(runs)), cell([r.metrics["test"]["multimodal"][key] for r in runs], factor),
                     *(cell([r.metrics["test"]["per_modality"][m][key] for r in runs], factor) for m in modalities)])
    return header, rows


def group_analyses(groups: dict[str, list[RunRecord]],
                    keep: Callable[[dict], bool] = lambda a: True) -> dict[str, list[dict]]:
    """Each group's analyses (``g2d analyze`` results) that ``keep`` accepts; groups with none are left out."""
    found = {label: [r.analysis for r in runs if r.analysis and keep(r.analysis)] for label, runs in groups.items()}
    return {label: analyses for label, analyses in found.items() if analyses}


def analysis_rows(groups: dict[str, list[RunRecord]]) -> tuple[list[str], list[list[str]]]:
    """Per method and modality: inside-the-model score, linear probe, macro-F1, confidence ratio,
    alignment and Shapley value (test split, mean ± std over analysed seeds)."""
    first = next(iter(groups.values()))[0].metrics
    key, title, factor = main_metric(first["task"])
    classification = first["task"] == "classification"
    header = ["model", "modality", f"inside {title}", f"linear probe {title}",
              *(["inside macro-F1 (%)"] if classification else []), "confidence ratio", "alignment (cos)",
              "alignment before training (cos)",
              "Shapley (accuracy points)" if classification else "Shapley (minus MSE)"]
    rows = []
    for label, analysed in group_analyses(groups).items():
        for m in first["modalities"]:
            entries = [a["per_modality"][m] for a in analysed]
            rows.append([
                label, m, cell([e["inside"][key] for e in entries], factor),
                cell([e["probe"][key] for e in entries], factor),
                *([cell([e["inside"]["macro_f1"] for e in entries], 100.0)] if classification else []),
                cell([e["confidence_ratio"] for e in entries if "confidence_ratio" in e], 1.0),
                cell([e["alignment"] for e in entries if "alignment" in e], 1.0),
                cell([e["alignment_at_start"] for e in entries if "alignment_at_start" in e], 1.0),
                cell([a["shapley"][m] for a in analysed], factor),
            ])
    return header, rows


def robustness_rows(groups: dict[str, list[RunRecord]]) -> tuple[list[str], list[list[str]]]:
    """Per method: the score with each subset of modalities present, then with noise of each level on
    each modality (test split, mean ± std over analysed seeds), the numbers behind the robustness figures."""
    first = next(iter(groups.values()))[0].metrics
    key, title, factor = main_metric(first["task"])
    analysed = group_analyses(groups)
    if not analysed:
        return [], []
    sample = next(iter(analysed.values()))[0]
    subsets = [tuple(row["present"]) for row in sample["subsets"]]
    noises = [(row["modality"], row["sigma"]) for row in sample["noise"] if row["sigma"]]
    header = ["model", *(("only " + " + ".join(s) if len(s) < len(first["modalities"]) else "all present")
                         if s else "none (label prior)" for s in subsets),
              *(f"noise {sigma:g} std on {m}" for m, sigma in noises)]
    rows = []
    for label, runs in analysed.items():
        by_subset = [cell([row[key] for a in runs for row in a["subsets"] if tuple(row["present"]) == s], factor)
                     for s in subsets]
        by_noise = [cell([row[key] for a in runs for row in a["noise"] if (row["modality"], row["sigma"]) == n],
                         factor) for n in noises]
        rows.append([label, *by_subset, *by_noise])
    return header, rows


def gap_rows(groups: dict[str, list[RunRecord]]) -> tuple[list[str], list[list[str]]]:
    """Per method: the distance between each pair of modalities' feature centroids (mean ± std over seeds)."""
    analysed = group_analyses(groups, lambda a: bool(a.get("modality_gap")))
    if not analysed:
        return [], []
    pairs = list(next(iter(analysed.values()))[0]["modality_gap"])
    header = ["model", *(f"gap {pair.replace('|', ' / ')}" for pair in pairs)]
    return header, [[label, *(cell([a["modality_gap"][pair] for a in runs], 1.0) for pair in pairs)]
                    for label, runs in analysed.items()]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-style Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def html_table(header: list[str], rows: list[list[str]]) -> str:
    """The same table as HTML, every cell escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(run_dirs: list[Path], out: Path, overwrite: bool = False) -> Path:
    """Compare runs in ``out/``: ``report.html`` (self-contained, figures inlined), the figures as
    PNG files and ``report.md``. Refuses an ``out`` that holds anything but an earlier report
    (``g2d.folders``), and that one unless ``overwrite``; reads every run before writing anything,
    and builds the report beside ``out``, swapping it in complete."""
    from g2d.results.figures import report_figures

    out = Path(out)
    check_target(out, "report", "--out", overwrite)
    if not run_dirs:
        raise G2DError("report: give at least one run folder")
    resolved = [Path(d).resolve() for d in run_dirs]
    for index, folder in enumerate(resolved):
        if folder in resolved[:index]:
            raise G2DError(f"report: {run_dirs[index]} is {run_dirs[resolved.index(folder)]} again; give each run "
                           "folder once (each counts as one seed)")
    records = [read_run(Path(d)) for d in run_dirs]
    tasks = {r.metrics["task"] for r in records}
    datasets = {r.metrics["dataset"] for r in records}
    modality_sets = {tuple(r.metrics["modalities"]) for r in records}
    if len(datasets) > 1 or len(tasks) > 1 or len(modality_sets) > 1:
        raise G2DError(f"report: runs must share dataset and modalities, got {sorted(datasets)} with "
                       f"{sorted(' + '.join(s) for s in modality_sets)}")
    groups = group_runs(records)
    with building(out, "report") as work:
        figures = report_figures(groups, work)
        sections = report_sections(groups, figures)
        (work / "report.md").write_text(render_markdown(groups, sections))
        (work / "report.html").write_text(render_html(groups, sections, work))
    return out / "report.html"


def report_sections(groups: dict[str, list[RunRecord]], figures: list) -> list[dict]:
    """The page's sections in order: title, explanation, optional table, figures."""
    first = next(iter(groups.values()))[0].metrics
    key, title, _ = main_metric(first["task"])
    by_name = {f.name: f for f in figures}
    sections = [{
        "title": "Results in the layout of the paper's Table 1",
        "text": (f"Test {title} of each model. A teacher is a model trained on one modality alone. For the "
                 "multimodal models, 'multimodal' scores the fused prediction and each modality column scores "
                 "that modality inside the multimodal model (its own head, or the fusion with the other "
                 "modalities deactivated). A weak modality far below its teacher is what the paper calls "
                 "modality imbalance. Cells are mean ± standard deviation over the seeds counted in 'seeds'."),
        "table": table1_rows(groups), "figures": [by_name[n] for n in ("curves",) if n in by_name],
    }]
    if "teacher_confidence" in by_name:
        sections.append({"title": "Teacher confidence over training (paper Fig. 3)",
                         "text": ("Confidence (Eq. 5: the mean probability a model gives the true class) of each "
                                  "unimodal teacher on the validation split after each of its training epochs. "
                                  "SMP ranks modalities by this score and trains the least confident first."),
                         "table": None, "figures": [by_name["teacher_confidence"]]})
    header, rows = analysis_rows(groups)
    if rows:
        sections.append({
            "title": "Analyses on the test split",
            "text": ("Computed by `g2d analyze` on each run. 'Linear probe': a linear model trained on the "
                     "frozen encoder's training-split features, then scored on test: if it is far above "
                     "'inside', the encoder knows more than the model's head uses. 'Confidence ratio': the "
                     "modality's confidence inside the model divided by its teacher's (paper Fig. 6; 1 = as "
                     "confident as alone). 'Alignment': mean cosine between the student's and the teacher's "
                     "features of the same input (paper Fig. 5); 'before training' is the same for the untrained "
                     "student: a student's encoder built first under the teacher's seed starts from the "
                     "teacher's own initial weights, and then shares some alignment with it whatever the "
                     "method. 'Shapley': the modality's average contribution "
                     f"to the multimodal {title} over the orders of adding modalities, starting from a "
                     "prediction without any modality (the training label prior)."),
            "table": (header, rows),
            "figures": [by_name[n] for n in ("confidence_ratio", "alignment", "probe", "shapley") if n in by_name],
        })
    if "missing" in by_name or "noise" in by_name:
        robustness = robustness_rows(groups)
        sections.append({
            "title": "Robustness: missing and noisy modalities",
            "text": ("Left out at test time, a modality is absent: late and sum fusion average (or add) only the "
                     "present modalities' heads; concat, FiLM, gated and cross-attention fusion receive zeros in "
                     "place of its features. Noise: Gaussian noise added to one modality's input, its standard "
                     "deviation in units of that input's own standard deviation on the training split. "
                     f"Table: test {title}, mean ± std over the analysed seeds."),
            "table": robustness if robustness[1] else None,
            "figures": [by_name[n] for n in ("missing", "noise") if n in by_name],
        })
    if "gap" in by_name:
        gaps = gap_rows(groups)
        sections.append({
            "title": "Modality gap in embedding space (paper Fig. 4)",
            "text": ("The L2-normalized encoder features of the same test inputs, one colour per modality, "
                     "projected to 2-D by PCA and by t-SNE (one seed per model). The number in each title is "
                     "the distance between the two modalities' centroids: the paper reports a larger gap for G²D. "
                     "Table: that distance, mean ± std over the analysed seeds."),
            "table": gaps if gaps[1] else None, "figures": [by_name["gap"]],
        })
    return sections


def intro(groups: dict[str, list[RunRecord]]) -> str:
    """The page's first paragraph: what was compared, on which data."""
    first = next(iter(groups.values()))[0]
    m = first.metrics
    runs = sum(len(v) for v in groups.values())
    return (f"{runs} runs of {len(groups)} configurations on {m['dataset']} ({' + '.join(m['modalities'])}, "
            f"{m['fusion']} fusion, {m['epochs']} epochs), compared on the test split. Runs that differ only in "
            "seed are grouped; models are chosen by validation score, and test is read once."
            + (f" Except: {OPTIMISTIC_NOTE}." if any(is_optimistic(r.metrics) for v in groups.values() for r in v)
               else ""))


def render_markdown(groups: dict[str, list[RunRecord]], sections: list[dict]) -> str:
    """``report.md``: the sections with Markdown tables and links to the PNG files beside it."""
    parts = ["# Run report", "", intro(groups), ""]
    for section in sections:
        parts += [f"## {section['title']}", "", section["text"], ""]
        if section["table"]:
            parts += [markdown_table(*section["table"]), ""]
        for figure in section["figures"]:
            parts += [f"![{figure.caption}]({figure.file})", "", f"*{figure.caption}*", ""]
    return "\n".join(parts)


PAGE_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
              "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #bbb;padding:3px 8px;"
              "text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}"
              "figure{margin:1.5em 0}img{max-width:100%}figcaption{font-size:90%;color:#555}")


def render_html(groups: dict[str, list[RunRecord]], sections: list[dict], figure_dir: Path) -> str:
    """One self-contained page: styles inline and figures as PNG data URIs."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>g2d run report</title>',
             f"<style>{PAGE_STYLE}</style></head><body>", "<h1>Run report</h1>", f"<p>{html.escape(intro(groups))}</p>"]
    for section in sections:
        parts += [f"<h2>{html.escape(section['title'])}</h2>", f"<p>{html.escape(section['text'])}</p>"]
        if section["table"]:
            parts.append(html_table(*section["table"]))
        for figure in section["figures"]:
            data = base64.b64encode((figure_dir / figure.file).read_bytes()).decode()
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(figure.caption)}">'
                         f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
