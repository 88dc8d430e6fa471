"""Sweeps: one config over a grid of overrides and several seeds, with one table of mean ± std.

``g2d sweep CONFIG --seeds 0 1 2 --grid key=v1,v2 key2=... --out DIR`` runs the cross product
of the grid (each combination is a *point*) for every seed, in ``DIR/<point>/seed<s>``:

- teachers are shared by every run whose teachers would be the same (same data, encoders,
  optimizer, trainer settings and seed: everything but the method, SMP and fusion), in
  ``DIR/teachers/<dataset>_seed<s>_<hash>``, and trained once, before the runs that use them (an
  explicit ``teachers.root`` is one folder, so it takes one seed per sweep);
- each dataset is loaded once per process (``loaded_data``) and checked against every run before
  the sweep writes anything;
- a run whose ``metrics.json`` exists is skipped (after checking its config is this one), and
  an interrupted run resumes from its checkpoint, so an interrupted sweep just continues;
- ``DIR`` must be new, empty or an earlier sweep (``g2d.folders``: never a run or a report),
  a seed is given once, and every run's config is checked before anything runs or prints;
- ``--workers N`` runs N experiments at a time in separate processes, which die with the sweep;
- the table goes to ``DIR/sweep.md``, ``DIR/sweep.csv`` and ``DIR/sweep.json`` (every
  point's overrides, run folders and per-metric mean, std and values);
- ``--print-commands`` prints one ``g2d train`` command per run for a scheduler's job array
  (after one ``g2d sweep ... --teachers-only`` command that trains the shared teachers).

The benchmark scripts build their own points (named variants rather than a cross product)
and call ``run_sweep``.
"""

from __future__ import annotations

import copy
import csv
import ctypes
import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import os
import shlex
import signal
import statistics
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import OmegaConf

from g2d.config import (
    ExperimentConfig,
    check_new_keys,
    flatten,
    load_config,
    role_of,
    same_folder,
    to_dict,
)
from g2d.data import MultimodalData, load_dataset
from g2d.errors import G2DError
from g2d.folders import check_target, mark
from g2d.io import atomic_write, write_json
from g2d.locks import make_folder
from g2d.methods import METHODS
from g2d.results.tables import mean_std, summary_metrics
from g2d.runs.check import check_data, preflight, smp_enabled
from g2d.runs.experiment import run
from g2d.training.teachers import ensure_teachers, teacher_summary
from g2d.training.threads import available_cores, set_budget
from g2d.training.tracking import finish_sweep, start_sweep


@dataclass
class Point:
    """One configuration of a sweep: a label for tables, its overrides, and its folder name."""

    label: str
    overrides: list[str]
    folder: str = ""

    def __post_init__(self) -> None:
        if not self.folder:
            self.folder = slug(self.label)


@dataclass
class Job:
    """One run: a point with a seed, its full overrides and run folder."""

    point: Point
    seed: int
    overrides: list[str]
    config: ExperimentConfig = field(repr=False)

    @property
    def out(self) -> Path:
        return self.config.run_dir()


def slug(text: str) -> str:
    """A folder name from a label: letters, digits, ``.``, ``-``, ``=`` and ``_`` kept, the rest ``_``."""
    cleaned = "".join(c if c.isalnum() or c in ".-=_" else "_" for c in text.replace("²", "2"))
    return "_".join(part for part in cleaned.split("_") if part) or "run"


def split_values(text: str) -> list[str]:
    """``a,b,[1,2]`` to ``["a", "b", "[1,2]"]``: commas inside brackets belong to a value."""
    values, depth, current = [], 0, ""
    for char in text:
        if char == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        current += char
    values.append(current)
    return values


def grid_points(grid: list[str]) -> list[Point]:
    """The cross product of ``key=v1,v2`` entries, one ``Point`` per combination (a single empty point without a grid)."""
    axes = []
    for entry in grid:
        key, sep, text = entry.partition("=")
        values = split_values(text)
        if not sep or not key or any(v == "" for v in values):
            raise G2DError(f"--grid {entry!r}: expected key=value1,value2,...")
        if key in ("seed", "out"):
            raise G2DError(f"--grid {entry!r}: {key} is set by the sweep itself (use --seeds and --out)")
        axes.append([f"{key}={value}" for value in values])
    if len({a[0].split("=")[0] for a in axes}) != len(axes):
        raise G2DError("--grid: a key appears twice")
    points = [Point(" ".join(combo), list(combo)) for combo in itertools.product(*axes)]
    return points or [Point("base", [])]


def teacher_key(config: ExperimentConfig) -> str:
    """A short hash of everything a run's teachers depend on: the keys whose role says they shape a teacher.

    Only settings that differ from the defaults count, so a key added to the config later (with a
    default that changes nothing) leaves the teachers of existing sweeps where they are.
    """
    flat, defaults = flatten(to_dict(config)), flatten(to_dict(ExperimentConfig()))
    if config.teachers.epochs is not None:
        flat.pop("trainer.epochs")
    kept = {k: v for k, v in flat.items()
            if role_of(k).teacher and (k not in defaults or defaults[k] != v)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:8]


def needs_teachers(config: ExperimentConfig) -> bool:
    """Whether the run trains with teachers (its method distils from them, or SMP ranks by them)."""
    method = METHODS.lookup(config.method_name)
    return method.uses_teachers or smp_enabled(config, method)


def plan_jobs(config_path: Path | None, overrides: list[str], points: list[Point], seeds: list[int], out: Path) -> list[Job]:
    """Every run of the sweep, its config loaded and preflight-checked (so a bad key or combination fails before anything runs)."""
    if not seeds:
        raise G2DError("--seeds: give at least one seed")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise G2DError(f"--seeds: seed {repeated[0]} is given twice; a seed runs once per configuration")
    check_target(out, "sweep", "--out", overwrite=False, reuse=True)
    folders = [p.folder for p in points]
    if len(set(folders)) != len(folders):
        raise G2DError(f"sweep: two configurations share the folder name {next(f for f in folders if folders.count(f) > 1)!r}")
    jobs = []
    for point in points:
        for seed in seeds:
            full = [*overrides, *point.overrides, f"seed={seed}", f"out={out / point.folder / f'seed{seed}'}",
                    "trainer.resume=true"]
            config = load_config(config_path, full)
            check_shared_teachers(config, seeds)
            if config.teachers.root is None:
                full.append(f"teachers.root={out / 'teachers' / f'{config.data_label}_seed{seed}_{teacher_key(config)}'}")
                config = load_config(config_path, full)
            preflight(config)
            jobs.append(Job(point, seed, full, config))
    return jobs


def check_shared_teachers(config: ExperimentConfig, seeds: list[int]) -> None:
    """A teacher is trained under one seed, so several seeds cannot share one explicit ``teachers.root``."""
    if config.teachers.root is not None and len(seeds) > 1:
        raise G2DError(f"config key teachers.root: one teachers folder ({config.teachers.root}) for seeds "
                       f"{', '.join(map(str, seeds))}, but a teacher is trained under one seed; leave teachers.root "
                       "out (the sweep keeps each seed's teachers apart in --out/teachers) or sweep one seed at a time")


def finished(job: Job) -> bool:
    """Whether the run already wrote its metrics; a finished run of another config is an error, never overwritten."""
    metrics = job.out / "metrics.json"
    if not metrics.is_file():
        return False
    saved_path = job.out / "config.yaml"
    try:
        saved = flatten(OmegaConf.to_container(OmegaConf.load(saved_path)))
    except Exception as exc:
        raise G2DError(f"{saved_path}: cannot read the finished run's config ({str(exc).splitlines()[0]})") from exc
    current = flatten(to_dict(job.config))
    new_keys = check_new_keys(saved, current, str(saved_path), lambda key: not role_of(key).result)
    for key in sorted(set(saved) | set(current)):
        role = role_of(key)
        if key in new_keys or not role.result or role.folder and same_folder(saved.get(key), current.get(key)):
            continue
        if saved.get(key) != current.get(key):
            raise G2DError(f"{saved_path}: config key {key} is {saved.get(key)!r} there but {current.get(key)!r} in this "
                           "sweep; use another --out or the same settings")
    return True


def teacher_jobs(jobs: list[Job], every_group: bool) -> list[Job]:
    """One job per shared teachers folder, covering every modality its runs use, to train them first.

    With ``every_group`` teachers are trained even for groups whose runs do not use them (their
    test scores then appear in every run's metrics).
    """
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(str(job.config.teachers_dir()), []).append(job)
    leaders = []
    for members in groups.values():
        if not every_group and not any(needs_teachers(j.config) for j in members):
            continue
        lead = members[0]
        chosen = [j.config.dataset.modalities for j in members]
        union = [] if any(not m for m in chosen) else sorted({m for modalities in chosen for m in modalities})
        leaders.append(Job(lead.point, lead.seed, [*lead.overrides, f"dataset.modalities=[{','.join(union)}]"],
                           lead.config))
    return leaders


# Each dataset a sweep's runs use, loaded once per process (``loaded_data``); emptied when the sweep ends.
LOADED: dict[str, MultimodalData] = {}


def loaded_data(config: ExperimentConfig) -> MultimodalData:
    """``config``'s dataset with all its modalities, as ``run`` loads it, read once per process however many runs
    and teachers use it (a slow loader or ``dataset.factory`` is called once by a sweep, once per worker with
    ``--workers N``); a shallow copy, so a run setting a flag on it leaves the next run's alone."""
    dataset = dataclasses.replace(config.dataset, modalities=[])
    key = json.dumps(dataclasses.asdict(dataset), sort_keys=True, default=str)
    if key not in LOADED:
        LOADED[key] = load_dataset(dataset)
    return copy.copy(LOADED[key])


def selected_data(config: ExperimentConfig) -> MultimodalData:
    """``loaded_data`` restricted to ``dataset.modalities``."""
    data = loaded_data(config)
    return data.select(config.dataset.modalities) if config.dataset.modalities else data


def check_jobs_data(jobs: list[Job]) -> None:
    """``check_data`` for every run, before the sweep writes or trains anything (the data is loaded once)."""
    for job in jobs:
        check_data(job.config, selected_data(job.config))


def train_teachers(config_path: Path | None, overrides: list[str]) -> dict:
    """Train the missing teachers of one config (what ``run`` would do first); returns their test metrics."""
    config = load_config(config_path, overrides)
    data = selected_data(config)
    return teacher_summary(ensure_teachers(config, data, lambda cfg, m: run(cfg, data.select([m]), teacher_of=m)))


def run_one(config_path: Path | None, overrides: list[str]) -> dict:
    """One experiment of the sweep (in this process or a worker); returns its metrics."""
    config = load_config(config_path, overrides)
    return run(config, loaded_data(config))


def start_worker(threads: int, parent: int) -> None:
    """A worker's set-up: its share of the CPU (N workers do not each start a thread per core), and
    death with the sweep that started it, which ``kill -9`` would otherwise leave training and holding
    run folders' locks."""
    torch.set_num_threads(threads)
    set_budget(threads)  # trainer.threads=auto stays within it
    if sys.platform.startswith("linux"):
        # The kernel sends SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG).
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # Elsewhere (and should the parent have died before prctl took effect) a thread watches the parent's pid.
    threading.Thread(target=watch_parent, args=(parent,), name="g2d-watch-parent", daemon=True).start()


PR_SET_PDEATHSIG = 1
PARENT_POLL_SECONDS = 1.0


def watch_parent(parent: int) -> None:
    """End this process at once when its parent ``parent`` is gone (it is then adopted by another process)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def execute(tasks: list[tuple[Callable, Path | None, list[str]]], workers: int,
            done: Callable[[int, Any], None]) -> None:
    """Run ``tasks`` (function, config path, overrides) with ``workers`` processes; ``done(index, result)`` per task."""
    if workers <= 1 or len(tasks) <= 1:
        for index, (function, config_path, overrides) in enumerate(tasks):
            done(index, function(config_path, overrides))
        return
    threads = max(1, available_cores() // workers)
    context = multiprocessing.get_context("spawn")  # a forked torch process may deadlock in its thread pools
    with ProcessPoolExecutor(workers, mp_context=context, initializer=start_worker,
                             initargs=(threads, os.getpid())) as pool:
        futures = {pool.submit(function, config_path, overrides): index
                   for index, (function, config_path, overrides) in enumerate(tasks)}
        for future in as_completed(futures):
            done(futures[future], future.result())


def run_sweep(
    config_path: Path | None,
    overrides: list[str],
    points: list[Point],
    seeds: list[int],
    out: Path,
    workers: int = 1,
    all_teachers: bool = False,
    teachers_only: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, list[dict]]:
    """Run every point for every seed (finished runs skipped); ``{point label: [metrics.json per seed]}``.

    Teachers shared by several runs are trained first (``all_teachers``: for every group, used
    or not); ``teachers_only`` stops there. Writes the summary files into ``out``.
    """
    if workers < 1:
        raise G2DError(f"--workers: must be >= 1, got {workers}")
    jobs = plan_jobs(config_path, overrides, points, seeds, out)
    pending = [job for job in jobs if not finished(job)]
    try:
        check_jobs_data(pending)
        return sweep_jobs(config_path, overrides, points, seeds, out, jobs, pending, workers, all_teachers,
                          teachers_only, log)
    finally:
        LOADED.clear()


def sweep_jobs(config_path: Path | None, overrides: list[str], points: list[Point], seeds: list[int], out: Path,
               jobs: list[Job], pending: list[Job], workers: int, all_teachers: bool, teachers_only: bool,
               log: Callable[[str], None]) -> dict[str, list[dict]]:
    """``run_sweep`` once its runs are planned and checked: the sweep folder, shared teachers, runs and tables."""
    make_folder(out, "--out")
    mark(out, "sweep")
    if pending:
        tracked = start_sweep(jobs[0].config, out, [p.label for p in points])
        for job in pending:
            job.overrides.extend(tracked)
    started = time.perf_counter()
    leaders = teacher_jobs(pending, all_teachers)
    if leaders:
        log(f"training shared teachers: {len(leaders)} group(s)")
        execute([(train_teachers, config_path, j.overrides) for j in leaders], workers, lambda i, r: None)
    if teachers_only:
        return {}
    log(f"{len(jobs)} runs: {len(jobs) - len(pending)} finished before, {len(pending)} to run with {workers} worker(s)")

    def report(index: int, metrics: dict) -> None:
        job = pending[index]
        log(f"{job.point.label} seed {job.seed}: test {json.dumps(metrics['test']['multimodal'])} "
            f"({metrics['wall_seconds']:.0f} s)")

    execute([(run_one, config_path, job.overrides) for job in pending], workers, report)
    results: dict[str, list[dict]] = {}
    for job in jobs:
        metrics = json.loads((job.out / "metrics.json").read_text())
        results.setdefault(job.point.label, []).append(metrics)
    write_tables(out, config_path, overrides, points, jobs, results, time.perf_counter() - started)
    finish_sweep(out, [out / "sweep.md", out / "sweep.csv", out / "sweep.json"])
    return results


def statistics_of(values: list[float]) -> dict[str, Any]:
    """Mean, sample std (0 for one value) and the values themselves."""
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def point_summary(runs: list[dict]) -> dict[str, Any]:
    """Per-metric statistics over a point's seeds: test multimodal and per-modality, validation multimodal."""
    first = runs[0]
    names = [k for k in first["test"]["multimodal"] if k != "loss"]
    return {
        "seeds": [r["seed"] for r in runs],
        "test": {
            "multimodal": {n: statistics_of([r["test"]["multimodal"][n] for r in runs]) for n in names},
            "per_modality": {m: {n: statistics_of([r["test"]["per_modality"][m][n] for r in runs]) for n in names}
                             for m in first["modalities"]},
        },
        "val": {"multimodal": {n: statistics_of([r["val"]["multimodal"][n] for r in runs]) for n in names}},
        "best_epoch": [r["best_epoch"] for r in runs],
        "wall_seconds": statistics_of([r["wall_seconds"] for r in runs]),
    }


def write_tables(out: Path, config_path: Path | None, overrides: list[str], points: list[Point], jobs: list[Job],
                 results: dict[str, list[dict]], seconds: float) -> None:
    """``sweep.md`` (mean ± std per point), ``sweep.csv`` (one row per point) and ``sweep.json``."""
    first = next(iter(results.values()))[0]
    metrics = summary_metrics(first["task"])
    modalities = list(dict.fromkeys(m for runs in results.values() for m in runs[0]["modalities"]))
    summaries = {p.label: point_summary(results[p.label]) for p in points}
    header = ["configuration", "seeds", *(f"test {title}" for _, title, _ in metrics),
              *(f"{m} inside: {title}" for m in modalities for _, title, _ in metrics), "wall s/run"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    rows = []
    for point in points:
        summary, runs = summaries[point.label], results[point.label]
        cells = [mean_std([r["test"]["multimodal"][key] for r in runs], factor) for key, _, factor in metrics]
        cells += [mean_std([r["test"]["per_modality"][m][key] for r in runs], factor) if m in runs[0]["modalities"]
                  else "-" for m in modalities for key, _, factor in metrics]
        lines.append(f"| {point.label} | {len(runs)} | " + " | ".join(cells) +
                     f" | {summary['wall_seconds']['mean']:.1f} |")
        row = {"configuration": point.label, "overrides": " ".join(point.overrides), "seeds": len(runs)}
        for key, _, _ in metrics:
            stats = summary["test"]["multimodal"][key]
            row[f"test_{key}_mean"], row[f"test_{key}_std"] = stats["mean"], stats["std"]
            for m in modalities:
                stats = summary["test"]["per_modality"].get(m, {}).get(key, {"mean": "", "std": ""})
                row[f"{m}_{key}_mean"], row[f"{m}_{key}_std"] = stats["mean"], stats["std"]
        row["wall_seconds_mean"] = summary["wall_seconds"]["mean"]
        rows.append(row)
    table = f"{first['dataset']}: test scores, mean ± std over seeds\n\n" + "\n".join(lines) + "\n"
    atomic_write(out / "sweep.md", lambda tmp: tmp.write_text(table))

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(out / "sweep.csv", write_csv)
    write_json(out / "sweep.json", {
        "format": "g2d-sweep/1",
        "config": str(config_path) if config_path else None,
        "overrides": overrides,
        "seeds": sorted({j.seed for j in jobs}),
        "seconds": round(seconds, 2),
        "points": [{"label": p.label, "overrides": p.overrides,
                    "runs": [str(j.out) for j in jobs if j.point is p], **summaries[p.label]} for p in points],
    })


def commands(config_path: Path | None, overrides: list[str], points: list[Point], seeds: list[int], out: Path,
             grid: list[str], all_teachers: bool = False) -> list[str]:
    """Shell lines for a job array: a teachers-only sweep first (when runs share teachers), then one run per line."""
    jobs = plan_jobs(config_path, overrides, points, seeds, out)
    lines = []
    if teacher_jobs(jobs, all_teachers):
        sweep = ["g2d", "sweep", *([str(config_path)] if config_path else []), *overrides, "--seeds",
                 *map(str, seeds), *(["--grid", *grid] if grid else []), "--out", str(out), "--teachers-only"]
        lines += ["# 1. shared teachers, before the runs:", shlex.join(sweep), "# 2. one run per line:"]
    config = [str(config_path)] if config_path else []
    lines += [shlex.join(["g2d", "train", *config, *job.overrides]) for job in jobs]
    return lines
