"""Tuning: Optuna searches a config's keys for the best validation score; each trial is an ordinary run.

``g2d tune CONFIG [key=value ...] --space KEY=SPEC ... --trials N --out DIR`` (``g2d[tune]``):

- ``SPEC``: ``LOW:HIGH`` (floats, or integers where the key is one and both ends are written as
  integers), ``LOW:HIGH:log``, a list of these (``[1:4,1:4]``: tau per phase, one parameter per
  element) or two or more choices (``ranked,dynamic``). Every key is tried at both ends of its range
  and at every choice, through ``load_config`` and the preflight, before anything is written;
- each trial runs in ``DIR/trials/<number>/seed<s>`` (one run folder per seed: locked, resumable),
  with teachers shared as in ``g2d sweep`` (``DIR/teachers/<dataset>_seed<s>_<hash>``); its value is
  the validation score of the epoch the run keeps, averaged over ``--seeds`` (test is never read);
  every epoch's validation score goes to the pruner, and ``DIR/trials/<number>/trial.json`` says
  what became of the trial (running, complete, pruned at an epoch, failed with the error);
- the study lives in ``--storage`` (default ``sqlite:///DIR/study.db``; any Optuna RDB URL, e.g.
  PostgreSQL for many machines). Processes on one study split the trials and stop at N counted
  trials (complete, pruned, or failed by their own error): a process asks for a trial only while
  fewer than N are counted or running, and a trial that finds N counted ones before it (two asked
  at once) is dropped as surplus. A trial whose process died (kill -9) stops beating (``--heartbeat``);
  after two beats the next process marks it failed and enqueues it again with the same parameters:
  the retry resumes the same run folders from their last checkpoints (Ctrl-C enqueues it at once);
- when N are counted: ``DIR/tune.md`` (trials, best trial, parameter importances), ``DIR/best.yaml``
  (the best trial's config, which ``g2d train`` runs as is) and the ``g2d sweep`` command that
  retrains it with several seeds and reports its test score.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import multiprocessing
import os
import shlex
import statistics
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from omegaconf import OmegaConf

from g2d.config import ExperimentConfig, flatten, is_tracking_key, load_config, to_dict, to_record
from g2d.errors import G2DError
from g2d.folders import check_target, kind_of, mark
from g2d.io import atomic_write, write_json
from g2d.locks import make_folder
from g2d.runs.check import Checked, preflight
from g2d.runs.experiment import run
from g2d.runs.sweep import split_values, start_worker, teacher_key
from g2d.training import tracking
from g2d.training.evaluate import selection_score
from g2d.training.threads import available_cores
from g2d.training.tracking import finish_sweep, start_sweep

INSTALL = "pip install 'g2d[tune]'"
PRUNERS = ("median", "hyperband", "none")
# Keys the tune sets itself, per trial.
RESERVED = ("seed", "out", "trainer.resume", "trainer.overwrite", "teachers.root")
# Keys left out of the study's record of its config: where things are, not what trains.
UNRECORDED = ("out", "seed", "teachers.root", "dataset.root", "trainer.resume", "trainer.progress", "trainer.device")
COUNTED_USER_ATTR, SURPLUS_USER_ATTR = "g2d.error", "g2d.surplus"


@dataclass
class Param:
    """One searched number or choice: ``name`` is the key (``key.<i>`` for a list element)."""

    name: str
    kind: str  # "float", "int" or "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: list[str] = field(default_factory=list)

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def ends(self) -> list[Any]:
        """The values tried before the tune starts: both ends of a range, every choice."""
        return self.choices if self.kind == "choice" else [self.low, self.high]


@dataclass
class Dimension:
    """One ``--space KEY=SPEC``: a key searched as a number, a choice, or a list of numbers."""

    key: str
    spec: str
    params: list[Param]
    is_list: bool = False

    def value(self, chosen: dict[str, Any]) -> str:
        """The override's value for the trial's ``chosen`` parameters."""
        values = [chosen[p.name] for p in self.params]
        return f"[{','.join(map(str, values))}]" if self.is_list else str(values[0])


@dataclass
class TuneOptions:
    """What ``g2d tune`` was asked (everything a worker process needs to join the study)."""

    config_path: Path | None
    overrides: list[str]
    space: list[str]
    trials: int
    out: Path
    storage: str | None = None
    study: str | None = None
    prune: str = "median"
    seeds: list[int] = field(default_factory=lambda: [0])
    workers: int = 1
    heartbeat: int = 30

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"

    @property
    def study_name(self) -> str:
        return self.study or self.out.resolve().name


def require_optuna() -> None:
    """Refuse, with the install command, when the ``tune`` extra is missing."""
    if importlib.util.find_spec("optuna") is None:
        raise G2DError(f"g2d tune needs the optuna package, which is not installed; {INSTALL}")


def parse_number(text: str, key: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise G2DError(f"--space {key}: {text!r} in {spec!r} is not a number") from None
    if not math.isfinite(value):
        raise G2DError(f"--space {key}: {text!r} in {spec!r} is not a finite number")
    return value


def is_integer(text: str) -> bool:
    return text.strip().lstrip("+-").isdigit()


def parse_range(text: str, name: str, key: str, spec: str, integer_key: bool) -> Param:
    """``LOW:HIGH`` or ``LOW:HIGH:log``: floats, or integers where the key takes them and both ends are written so."""
    parts = text.split(":")
    log = len(parts) == 3 and parts[2] == "log"
    if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
        raise G2DError(f"--space {key}: {spec!r} is not LOW:HIGH, LOW:HIGH:log or choice1,choice2")
    low, high = parse_number(parts[0], key, spec), parse_number(parts[1], key, spec)
    if low > high:
        raise G2DError(f"--space {key}: the range {text} is reversed (LOW must be below HIGH)")
    if low == high:
        raise G2DError(f"--space {key}: the range {text} is empty; a fixed value belongs in the overrides ({key}={parts[0]})")
    if log and low <= 0:
        raise G2DError(f"--space {key}: a log range must be above 0, got {text}")
    kind = "int" if integer_key and is_integer(parts[0]) and is_integer(parts[1]) else "float"
    return Param(name, kind, low, high, log)


def parse_dimension(entry: str, base: ExperimentConfig) -> Dimension:
    """One ``KEY=SPEC`` (the grammar in the module doc); ``base`` tells which keys take integers."""
    key, sep, spec = entry.partition("=")
    key, spec = key.strip(), spec.strip()
    if not sep or not key or not spec:
        raise G2DError(f"--space {entry!r}: expected KEY=SPEC, e.g. optim.lr=1e-3:1e-1:log")
    if key in RESERVED or is_tracking_key(key):
        raise G2DError(f"--space {key}: set by the tune itself or not a training setting; it cannot be searched")
    method_key = key.split(".")
    if method_key[0] == "method" and key != "method.name" and (len(method_key) < 3 or method_key[1] != base.method_name):
        raise G2DError(f"--space {key}: the method is {base.method_name}, whose settings are method.{base.method_name}.*; "
                       f"{key} would change nothing")
    current = flatten(to_dict(base)).get(key)
    if spec.startswith("[") and spec.endswith("]"):
        elements = split_values(spec[1:-1])
        if not elements or any(":" not in e for e in elements):
            raise G2DError(f"--space {key}: a list is [LOW:HIGH,...], one range per element, got {spec!r}")
        params = [parse_range(e.strip(), f"{key}.{i}", key, spec, True) for i, e in enumerate(elements)]
        return Dimension(key, spec, params, is_list=True)
    if ":" in spec:
        return Dimension(key, spec, [parse_range(spec, key, key, spec, not isinstance(current, float))])
    choices = [c.strip() for c in split_values(spec)]
    if len(choices) < 2 or any(c == "" for c in choices):
        raise G2DError(f"--space {key}: {spec!r} needs two choices or more (a fixed value belongs in the overrides)")
    if len(set(choices)) != len(choices):
        raise G2DError(f"--space {key}: a choice appears twice in {spec!r}")
    return Dimension(key, spec, [Param(key, "choice", choices=choices)])


def number_text(value: float, kind: str) -> str:
    return str(int(value)) if kind == "int" else repr(float(value))


def parse_space(options: TuneOptions) -> tuple[ExperimentConfig, list[Dimension]]:
    """The base config and the searched dimensions, each checked at its ends and choices (nothing written)."""
    if not options.space:
        raise G2DError("--space: give at least one KEY=SPEC to search")
    base = load_config(options.config_path, options.overrides)
    preflight(base)
    dimensions = [parse_dimension(entry, base) for entry in options.space]
    keys = [d.key for d in dimensions]
    if len(set(keys)) != len(keys):
        raise G2DError(f"--space {next(k for k in keys if keys.count(k) > 1)}: given twice")
    for dimension in dimensions:
        for index, param in enumerate(dimension.params):
            for end in param.ends():
                chosen = {p.name: p.ends()[0] for p in dimension.params}
                chosen[param.name] = end
                text = {p.name: chosen[p.name] if p.kind == "choice" else number_text(chosen[p.name], p.kind)
                        for p in dimension.params}
                try:
                    preflight(load_config(options.config_path, [*options.overrides,
                                                                 f"{dimension.key}={dimension.value(text)}"]))
                except G2DError as exc:
                    raise G2DError(f"--space {dimension.key}={dimension.spec}: at {dimension.value(text)}: {exc}") from None
    return base, dimensions


def study_record(options: TuneOptions, base: ExperimentConfig) -> dict[str, Any]:
    """What a study belongs to: the config's training settings, the space and the seeds."""
    flat = {k: v for k, v in flatten(to_dict(base)).items()
            if not is_tracking_key(k) and not any(k == u or k.startswith(u + ".") for u in UNRECORDED)}
    return {"config": flat, "space": list(options.space), "seeds": list(options.seeds)}


def describe_url(url: str) -> str:
    """The storage URL with any password hidden, for messages."""
    with contextlib.suppress(Exception):
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    return url


def open_storage(options: TuneOptions) -> Any:
    """The study's RDB storage with heartbeats (a dead process's trial is failed and retried); exit 2 when it cannot open."""
    import optuna
    from optuna.storages import RDBStorage

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # g2d prints one line per trial itself
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    url = options.storage_url
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=options.heartbeat,
                          grace_period=2 * options.heartbeat, heartbeat_stale_trial_callback=retry())
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise G2DError(f"--storage {describe_url(url)}: cannot be opened ({reason})") from None


def retry() -> Any:
    """Enqueues a failed trial again with its parameters and epochs reported (its retry resumes its folder)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    return RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)


def check_study(storage: Any, options: TuneOptions, record: dict[str, Any]) -> None:
    """Refuse a study of the same name made for another config, space or seeds (first differing key named)."""
    import optuna

    names = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if options.study_name not in names:
        return
    saved = names[options.study_name].user_attrs.get("g2d.study")
    if saved is None:
        raise G2DError(f"--study {options.study_name}: exists in {describe_url(options.storage_url)} but was not made "
                       "by g2d tune; choose another --study")
    for part in ("space", "seeds"):
        if saved.get(part) != record[part]:
            raise G2DError(f"--study {options.study_name}: belongs to another {part} ({saved.get(part)} there, "
                           f"{record[part]} here); choose another --study or the same settings")
    for key in sorted(set(saved["config"]) | set(record["config"])):
        if saved["config"].get(key) != record["config"].get(key):
            raise G2DError(f"--study {options.study_name}: belongs to another config (key {key} is "
                           f"{saved['config'].get(key)!r} there, {record['config'].get(key)!r} here); choose another "
                           "--study or the same settings")


def make_pruner(name: str, steps: int) -> Any:
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=steps)
    return optuna.pruners.NopPruner()


def load_study(options: TuneOptions, storage: Any, record: dict[str, Any], steps: int, worker: int) -> Any:
    """Create or join the study; the sampler's seed differs per process, so processes joining together
    do not draw the same first trials."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=options.seeds[0] * 1000 + worker + os.getpid() % 997,
                                         constant_liar=True)
    study = optuna.create_study(storage=storage, study_name=options.study_name, direction="maximize",
                                sampler=sampler, pruner=make_pruner(options.prune, steps), load_if_exists=True)
    if "g2d.study" not in study.user_attrs:
        study.set_user_attr("g2d.study", record)
    return study


def counts(study: Any) -> tuple[int, int]:
    """(trials counted as done, trials counted or running)."""
    from optuna.trial import TrialState

    done = running = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
                trial.state == TrialState.FAIL and COUNTED_USER_ATTR in trial.user_attrs):
            done += 1
        elif trial.state == TrialState.RUNNING:
            running += 1
    return done, done + running


def is_surplus(study: Any, number: int, limit: int) -> bool:
    """Whether ``limit`` trials numbered before ``number`` are counted or running (two processes asked at once)."""
    from optuna.trial import TrialState

    before = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.number >= number:
            continue
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) or (
                trial.state == TrialState.FAIL and COUNTED_USER_ATTR in trial.user_attrs):
            before += 1
    return before >= limit


class Surplus(Exception):
    """A trial asked for when the study already had its N trials (dropped, never counted)."""


def frozen(study: Any, number: int) -> Any:
    """The stored record of the study's trial ``number``."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def folder_number(trial: Any) -> int:
    """A retried trial (a ``FrozenTrial``) runs in the folder of the trial it replaces."""
    return int(trial.system_attrs.get("failed_trial", trial.number))


def trial_folder(out: Path, number: int) -> Path:
    return out / "trials" / f"{number:04d}"


@dataclass
class Plan:
    """A study's fixed parts, made once per process."""

    options: TuneOptions
    base: ExperimentConfig
    dimensions: list[Dimension]
    tracked: list[str]

    def overrides(self, chosen: dict[str, Any]) -> list[str]:
        return [*self.options.overrides, *(f"{d.key}={d.value(chosen)}" for d in self.dimensions)]

    def config(self, chosen: dict[str, Any], seed: int, folder: Path) -> Checked:
        """A trial's run for one seed, preflight-checked: its run folder, its shared teachers (as in ``g2d sweep``)."""
        full = [*self.overrides(chosen), f"seed={seed}", f"out={folder / f'seed{seed}'}", "trainer.resume=true",
                *self.tracked]
        config = load_config(self.options.config_path, full)
        if config.teachers.root is None:
            out = self.options.out
            full.append(f"teachers.root={out / 'teachers' / f'{config.data_label}_seed{seed}_{teacher_key(config)}'}")
            config = load_config(self.options.config_path, full)
        return preflight(config)


def validation_score(val: dict) -> float:
    """The score a run keeps its epoch by (accuracy, or minus the MSE for regression)."""
    return selection_score(val, "classification" if "accuracy" in val["multimodal"] else "regression")


@contextlib.contextmanager
def observing(observer: Callable[[Path | None, dict], None]) -> Iterator[None]:
    """Give ``observer`` every epoch's run folder and record in the block (``tracking.EPOCH_OBSERVERS``)."""
    tracking.EPOCH_OBSERVERS.append(observer)
    try:
        yield
    finally:
        tracking.EPOCH_OBSERVERS.remove(observer)


def objective(plan: Plan, study: Any, log: Callable[[str], None]) -> Callable[[Any], float]:
    """The trial's value: the validation score of each seed's run, averaged; each epoch reported to the pruner."""
    import optuna

    options = plan.options

    def evaluate(trial: Any) -> float:
        if is_surplus(study, trial.number, options.trials):
            trial.set_user_attr(SURPLUS_USER_ATTR, True)
            raise Surplus(f"trial {trial.number}: the study already has {options.trials} trials")
        chosen = {p.name: p.suggest(trial) for d in plan.dimensions for p in d.params}
        number = folder_number(frozen(study, trial.number))
        folder = trial_folder(options.out, number)
        make_folder(folder, "--out")
        state = {"number": number, "optuna_trial": trial.number, "params": chosen, "seeds": options.seeds,
                 "runs": [str(folder / f"seed{s}") for s in options.seeds]}
        write_json(folder / "trial.json", {**state, "state": "running"})
        epochs = 0
        scores = []
        try:
            for index, seed in enumerate(options.seeds):
                checked = plan.config(chosen, seed, folder)
                config = checked.config
                epochs = config.trainer.epochs

                def report(run_dir: Path | None, record: dict, offset: int = index * config.trainer.epochs,
                           own: Path = config.run_dir()) -> None:
                    if run_dir != own:  # a teacher trained on the way
                        return
                    step = offset + record["epoch"]
                    trial.report(validation_score(record["val"]), step)
                    if trial.should_prune():
                        write_json(folder / "trial.json", {**state, "state": "pruned", "pruned_after_step": step,
                                                           "seed": seed, "epoch": record["epoch"],
                                                           "note": "pruned: the run folder holds the epochs trained "
                                                                   "before the pruner stopped it"})
                        raise optuna.TrialPruned(f"seed {seed}, epoch {record['epoch']}")

                with observing(report):
                    metrics = run(checked)
                scores.append(validation_score(metrics["val"]))
        except optuna.TrialPruned:
            log(f"trial {state['number']}: pruned ({chosen})")
            raise
        except G2DError as exc:
            trial.set_user_attr(COUNTED_USER_ATTR, str(exc))
            write_json(folder / "trial.json", {**state, "state": "failed", "error": str(exc)})
            log(f"trial {state['number']}: failed: {exc}")
            raise
        except BaseException:
            # Interrupted (Ctrl-C, a crash): enqueue it again so the next run resumes its folders.
            retry()(study, frozen(study, trial.number))
            raise
        value = statistics.mean(scores)
        write_json(folder / "trial.json", {**state, "state": "complete", "value": value, "scores": scores,
                                           "epochs": epochs})
        log(f"trial {state['number']}: validation {value:.4f} ({chosen})")
        return value

    return evaluate


def work(options: TuneOptions, worker: int = 0, log: Callable[[str], None] = print) -> None:
    """One process's share of the study: trials until N are counted (waiting for other processes' running
    ones, which finish or are failed and retried once their heartbeat stops)."""
    import optuna

    require_optuna()
    base, dimensions = parse_space(options)
    storage = open_storage(options)
    record = study_record(options, base)
    check_study(storage, options, record)
    steps = base.trainer.epochs * len(options.seeds)
    study = load_study(options, storage, record, steps, worker)
    plan = Plan(options, base, dimensions, read_tracked(options.out))
    evaluate = objective(plan, study, log)
    while True:
        optuna.storages.fail_stale_trials(study)
        done, busy = counts(study)
        if done >= options.trials:
            return
        if busy >= options.trials:
            time.sleep(options.heartbeat)
            continue
        study.optimize(evaluate, n_trials=1, catch=(G2DError, Surplus))


def read_tracked(out: Path) -> list[str]:
    """The tracking overrides ``tune`` recorded for its trials (children of the study's parent run)."""
    path = out / "tracked.json"
    return json.loads(path.read_text()) if path.is_file() else []


def run_worker(options: TuneOptions, worker: int) -> None:
    work(options, worker, log=lambda line: print(line, flush=True))


def tune(options: TuneOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or join, or finish) the study; write ``tune.md`` and ``best.yaml``; returns the summary."""
    require_optuna()
    if options.trials < 1:
        raise G2DError(f"--trials: must be at least 1, got {options.trials}")
    if options.workers < 1:
        raise G2DError(f"--workers: must be at least 1, got {options.workers}")
    if options.heartbeat < 1:
        raise G2DError(f"--heartbeat: must be at least 1 second, got {options.heartbeat}")
    if options.prune not in PRUNERS:
        raise G2DError(f"--prune: {options.prune!r} is not one of {', '.join(PRUNERS)}")
    if not options.seeds or len(set(options.seeds)) != len(options.seeds):
        raise G2DError("--seeds: give each seed once, at least one")
    base, _ = parse_space(options)
    check_target(options.out, "tune", "--out", overwrite=False, reuse=True)
    if options.storage is not None or (options.out / "study.db").is_file():
        check_study(open_storage(options), options, study_record(options, base))
    make_folder(options.out, "--out")
    mark(options.out, "tune")
    if not (options.out / "tracked.json").is_file():
        write_json(options.out / "tracked.json", start_sweep(base, options.out, list(options.space)))
    started = time.perf_counter()
    if options.workers == 1:
        work(options, 0, log)
    else:
        context = multiprocessing.get_context("spawn")
        threads = max(1, available_cores() // options.workers)
        with ProcessPoolExecutor(options.workers, mp_context=context, initializer=start_worker,
                                 initargs=(threads, os.getpid())) as pool:
            for future in [pool.submit(run_worker, options, index) for index in range(options.workers)]:
                future.result()
    summary = write_outputs(options, time.perf_counter() - started)
    finish_sweep(options.out, [options.out / "tune.md", options.out / "best.yaml"])
    return summary


def retrain_command(options: TuneOptions, config: ExperimentConfig) -> str:
    """The command that retrains the best ``config`` with several seeds and reports its test score (a
    teachers folder set in the config holds one seed's teachers: the sweep then makes one per seed)."""
    seeds = options.seeds if len(options.seeds) > 1 else [0, 1, 2]
    teachers = ["teachers.root=null"] if config.teachers.root else []
    return shlex.join(["g2d", "sweep", str(options.out / "best.yaml"), *teachers, "--seeds", *map(str, seeds),
                       "--out", str(options.out / "retrain")])


def write_outputs(options: TuneOptions, seconds: float) -> dict[str, Any]:
    """``tune.md`` (trials, best, importances), ``best.yaml`` and ``tune.json``, from the study."""
    import optuna
    from optuna.trial import TrialState

    storage = open_storage(options)
    study = optuna.load_study(study_name=options.study_name, storage=storage)
    base, dimensions = parse_space(options)
    names = [p.name for d in dimensions for p in d.params]
    rows, counted = [], []
    for trial in study.get_trials(deepcopy=False):
        if SURPLUS_USER_ATTR in trial.user_attrs:
            continue
        retried = trial.state == TrialState.FAIL and COUNTED_USER_ATTR not in trial.user_attrs
        state = "interrupted, retried" if retried else trial.state.name.lower()
        if trial.state == TrialState.FAIL and not retried:
            state = "failed"
        if trial.state == TrialState.PRUNED and trial.intermediate_values:
            state = f"pruned after epoch {max(trial.intermediate_values) % base.trainer.epochs + 1}"
        seconds_taken = (trial.datetime_complete - trial.datetime_start).total_seconds() \
            if trial.datetime_complete and trial.datetime_start else None
        folder = trial_folder(options.out, folder_number(trial))
        row = {"trial": trial.number, "folder": str(folder) if folder.is_dir() else "", "state": state,
               "value": trial.value, "params": trial.params, "seconds": seconds_taken}
        rows.append(row)
        if not retried:
            counted.append(row)
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not complete:
        raise G2DError(f"tune: no trial of study {options.study_name} completed; see {options.out / 'trials'}/*/trial.json")
    best = study.best_trial
    importances: dict[str, float] = {}
    with contextlib.suppress(Exception), warnings.catch_warnings():  # needs two complete trials that differ
        warnings.simplefilter("ignore")
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    chosen = best.params
    best_folder = trial_folder(options.out, folder_number(best))
    best_config = load_config(options.config_path, [*Plan(options, base, dimensions, []).overrides(chosen),
                                                    f"seed={options.seeds[0]}", f"out={options.out / 'best'}"])
    atomic_write(options.out / "best.yaml", lambda tmp: tmp.write_text(OmegaConf.to_yaml(to_record(best_config))))
    pruned = sum(1 for r in counted if r["state"].startswith("pruned"))
    lines = [f"# Tune: study {options.study_name}", "",
             f"Storage `{describe_url(options.storage_url)}`; {len(counted)} trials counted of {options.trials} "
             f"({sum(1 for r in counted if r['state'] == 'complete')} complete, {pruned} pruned, "
             f"{sum(1 for r in counted if r['state'] == 'failed')} failed); seeds {options.seeds}; pruner "
             f"{options.prune}. The value is the validation score of the epoch each run keeps, averaged over the "
             "seeds (the test split is not read).", "",
             "| trial | state | validation | " + " | ".join(names) + " | seconds | folder |",
             "|" + " --- |" * (len(names) + 5)]
    for row in rows:
        value = "" if row["value"] is None else f"{row['value']:.4f}"
        params = [format_param(row["params"].get(n)) for n in names]
        took = "" if row["seconds"] is None else f"{row['seconds']:.0f}"
        lines.append(f"| {row['trial']} | {row['state']} | {value} | " + " | ".join(params) + f" | {took} | {row['folder']} |")
    lines += ["", "A pruned trial's validation is its score at the epoch the pruner stopped it."]
    lines += ["", f"## Best trial: {best.number} (validation {best.value:.4f})", "",
              *(f"- `{name}`: {format_param(best.params[name])}" for name in names), "",
              f"Its runs: `{best_folder}`. Its config: `{options.out / 'best.yaml'}` (`g2d train` runs it as is).",
              "Retrain it with several seeds and read its test score:", "", "```bash", retrain_command(options, best_config), "```",
              "", "## Parameter importances (fANOVA over the complete trials)", ""]
    lines += [f"- `{name}`: {value:.3f}" for name, value in importances.items()] or ["- (needs two complete trials)"]
    lines += ["", f"Look at the study: `optuna-dashboard {describe_url(options.storage_url)}`", ""]
    atomic_write(options.out / "tune.md", lambda tmp: tmp.write_text("\n".join(lines)))
    summary = {"format": "g2d-tune/1", "study": options.study_name, "storage": describe_url(options.storage_url),
               "trials": options.trials, "seeds": options.seeds, "space": options.space,
               "seconds": round(seconds, 2), "best": {"trial": best.number, "value": best.value, "params": best.params,
                                                       "folder": str(best_folder)},
               "pruned": pruned, "importances": importances, "rows": rows, "retrain": retrain_command(options, best_config)}
    write_json(options.out / "tune.json", summary)
    return summary


def format_param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def tune_runs(folder: Path) -> list[Path]:
    """A tune folder's finished trial runs (for ``g2d report DIR``); any other folder as given."""
    if kind_of(Path(folder)) != "tune":
        return [Path(folder)]
    runs = sorted(p.parent for p in (Path(folder) / "trials").glob("*/seed*/metrics.json"))
    if not runs:
        raise G2DError(f"{folder}: a tune folder with no finished trial yet")
    return runs
