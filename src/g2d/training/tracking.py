"""Experiment tracking: what a run logs, sent to each backend of ``trainer.loggers``.

One ``Tracking`` per run holds the configured backends (``tensorboard``, ``csv``, ``mlflow``,
``wandb``; ``BACKENDS``) and is called by the loop once per epoch and by the experiment once at
the end. The names are built here, once, so every backend logs the same ones (docs/tracking.md):

- parameters: the resolved config, flattened (``optim.lr``, ``smp.tau``, ...);
- per epoch (step = 0-based epoch): ``train/<term>`` (loss terms, ``train/kappa/<m>`` = SMP's
  coefficients), ``val/multimodal/<metric>``, ``val/<m>/<metric>``, ``lr``, ``epoch_seconds``,
  and with SMP ``smp/phase``, ``smp/allowed/<m>`` and ``teacher/<m>/train_confidence``;
- at the end (step = trainer.epochs): every number under metrics.json's ``test`` as
  ``test/<path>``, the chosen epoch's ``best_val/<path>``, ``teachers/<m>/<metric>``,
  ``best_epoch`` and ``wall_seconds``; ``metrics.json`` and later ``g2d analyze``/``g2d report``
  files as artifacts.

Each backend's run id goes to ``<run folder>/tracking.json``, so a resumed run continues the same
tracked run. A backend that fails (store unreachable, disk full) is warned about once and dropped:
tracking never stops training or touches the run's own files.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import logging
import math
import os
import socket
import sqlite3
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

from g2d.config import ExperimentConfig, flatten, load_config, to_dict
from g2d.errors import G2DError
from g2d.io import write_json
from g2d.registry import Registry
from g2d.training.epochs import smp_choice

logger = logging.getLogger("g2d")

TRACKING_FILE = "tracking.json"
# Logged every epoch by every run: a backend's history of it says which epochs it already holds.
EPOCH_KEY = "lr"
# Called with each epoch's record once its checkpoint is committed (``g2d tune`` reports the validation
# score to Optuna's pruner); one that raises stops the run there, as resumable as any interruption.
EPOCH_OBSERVERS: list[Callable[[Path | None, dict], None]] = []


@dataclass
class RunInfo:
    """What a backend needs to open (or reopen) one run's tracked run."""

    run_dir: Path
    config: ExperimentConfig
    tags: dict[str, str] = field(default_factory=dict)
    stored: dict[str, Any] = field(default_factory=dict)  # this backend's entry of tracking.json, when resuming
    teachers: dict[str, dict] = field(default_factory=dict)  # modality: that teacher's tracking.json

    @property
    def params(self) -> dict[str, Any]:
        return flatten(to_dict(self.config))

    @property
    def name(self) -> str:
        """The tracked run's name: the run folder, with its parent for a sweep's ``<point>/seed<s>``."""
        return f"{self.run_dir.parent.name}/{self.run_dir.name}" if self.config.trainer.mlflow.parent_run_id \
            else self.run_dir.name


class Backend:
    """One tracking backend for one run; its record is its class: ``name`` (given by ``@BACKENDS.register``)
    and ``module``, the package it needs (None: always installed)."""

    name: ClassVar[str] = ""
    module: ClassVar[str | None] = None

    def __init__(self, run: RunInfo) -> None:
        self.run = run

    def ids(self) -> dict[str, Any]:
        """What ``tracking.json`` keeps to reopen this tracked run on resume ({} when nothing)."""
        return {}

    def last_step(self) -> int | None:
        """The last epoch this backend holds when resuming (None: unknown, nothing is replayed)."""
        return None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_files(self, files: list[Path], folder: str) -> None:
        """Attach files (artifacts) under ``folder``; backends without artifacts ignore them."""

    def close(self, ok: bool) -> None:
        """Flush and end the tracked run (``ok``: the run finished, else it failed)."""


# ``@BACKENDS.register("name")`` on the class: ``trainer.loggers=[name]`` selects it.
BACKENDS: Registry[type[Backend]] = Registry("logger", "trainer.loggers")


@BACKENDS.register("tensorboard")
class TensorBoardBackend(Backend):
    """Event files in ``<run folder>/tb`` (``tensorboard --logdir``)."""

    def __init__(self, run: RunInfo) -> None:
        super().__init__(run)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run.run_dir / "tb"))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def close(self, ok: bool) -> None:
        self.writer.close()


@BACKENDS.register("csv")
class CSVBackend(Backend):
    """``<run folder>/tracking.csv``: one ``step,name,value`` row per number, appended each epoch."""

    def __init__(self, run: RunInfo) -> None:
        super().__init__(run)
        self.path = run.run_dir / "tracking.csv"
        if not self.path.is_file() or not run.stored:
            self.path.write_text("step,name,value\n")

    def ids(self) -> dict[str, Any]:
        return {"path": self.path.name}

    def last_step(self) -> int | None:
        with open(self.path, newline="") as handle:
            steps = [int(row["step"]) for row in csv.DictReader(handle) if row["name"] == EPOCH_KEY]
        return max(steps, default=-1)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerows((step, name, value) for name, value in metrics.items())


def mlflow_uri(config: ExperimentConfig, run_dir: Path) -> str:
    """``trainer.mlflow.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite store beside the run folder."""
    return (config.trainer.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{(run_dir.resolve().parent / 'mlflow.db')}")


def mlflow_experiment(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created when missing; a SQLite store keeps artifacts beside its file."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # another process created it in between
        return client.get_experiment_by_name(name).experiment_id


# MLflow's documented HTTP settings for g2d's own requests (a user's own values win): one retry, a short
# backoff and a 10 s timeout, so a store that stops answering mid-run costs seconds, not minutes.
MLFLOW_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
PROBE_SECONDS = 5.0


@contextlib.contextmanager
def patient_requests() -> Iterator[None]:
    """``MLFLOW_HTTP`` in the environment for the block only (MLflow reads them at each request), then as it was."""
    added = {name: value for name, value in MLFLOW_HTTP.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def probe_store(uri: str) -> None:
    """Raise at once (OSError) when ``uri``'s store cannot be reached: a SQLite file that cannot be opened, or a
    server that does not accept a connection within seconds. MLflow itself retries either for minutes."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)  # as MLflow does before it opens the file
        try:
            sqlite3.connect(path, timeout=PROBE_SECONDS).close()
        except sqlite3.Error as exc:
            raise OSError(f"{path}: {exc}") from None
        return
    reach_server(uri)


def reach_server(url: str) -> None:
    """Connect to an http(s) ``url``'s host and port once, within ``PROBE_SECONDS`` (other schemes: nothing)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=PROBE_SECONDS).close()
    except OSError as exc:
        raise OSError(f"{parts.hostname}:{port} cannot be reached ({exc.strerror or exc})") from None


def mlflow_client(uri: str) -> Any:
    """An ``MlflowClient`` for a store that answered ``probe_store``; call it inside ``patient_requests``."""
    probe_store(uri)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@BACKENDS.register("mlflow")
class MLflowBackend(Backend):
    """A run in an MLflow store: params, metric histories, tags linking teachers and the sweep's parent."""

    module = "mlflow"

    def __init__(self, run: RunInfo) -> None:
        super().__init__(run)
        from mlflow.entities import Param

        settings = run.config.trainer.mlflow
        self.uri = run.stored.get("tracking_uri") or mlflow_uri(run.config, run.run_dir)
        self.client = mlflow_client(self.uri)
        if run.stored.get("run_id"):
            self.run_id = run.stored["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        tags = {**run.tags, **{f"g2d.teacher.{m}.run_id": ids["mlflow"]["run_id"]
                               for m, ids in run.teachers.items() if "mlflow" in ids}}
        if settings.parent_run_id:
            tags["mlflow.parentRunId"] = settings.parent_run_id
        experiment = mlflow_experiment(self.client, settings.experiment, self.uri)
        self.run_id = self.client.create_run(experiment, run_name=run.name, tags=tags).info.run_id
        params = [Param(key, str(value)[:6000]) for key, value in run.params.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def ids(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.uri}

    def last_step(self) -> int | None:
        return max((m.step for m in self.client.get_metric_history(self.run_id, EPOCH_KEY)), default=-1)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_files(self, files: list[Path], folder: str) -> None:
        for path in files:
            self.client.log_artifact(self.run_id, str(path), folder)

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


@BACKENDS.register("wandb")
class WandbBackend(Backend):
    """A Weights & Biases run, offline by default: files in ``<run folder>/wandb`` for ``wandb sync``."""

    module = "wandb"

    def __init__(self, run: RunInfo) -> None:
        super().__init__(run)
        import wandb

        settings = run.config.trainer.wandb
        mode = wandb_mode(run.config)
        if mode == "online":
            reach_server(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
        self.id = run.stored.get("id") or uuid.uuid4().hex[:12]
        config = {**run.params, **{f"g2d.{k}": v for k, v in run.tags.items()},
                  **{f"g2d.teacher.{m}.run_id": ids["wandb"]["id"] for m, ids in run.teachers.items() if "wandb" in ids}}
        self.wandb = wandb.init(
            project=settings.project, group=settings.group, tags=list(settings.tags), name=run.name, id=self.id,
            resume="allow", dir=str(run.run_dir), config=config, reinit="create_new",
            settings=wandb.Settings(mode=mode, console="off", x_disable_stats=True, silent=True, disable_git=True),
        )

    def ids(self) -> dict[str, Any]:
        return {"id": self.id}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.wandb.log(metrics, step=step)

    def log_files(self, files: list[Path], folder: str) -> None:
        for path in files:
            self.wandb.save(str(path), base_path=str(path.parent), policy="now")

    def close(self, ok: bool) -> None:
        self.wandb.finish(exit_code=0 if ok else 1)


def check_loggers(config: ExperimentConfig) -> None:
    """Refuse, before anything trains, an unknown logger or one whose package is not installed."""
    for name in config.trainer.loggers:
        backend = BACKENDS[name]
        if backend.module and importlib.util.find_spec(backend.module) is None:
            raise G2DError(f"config key trainer.loggers: {name} needs the {backend.module} package, which is not "
                           f"installed; pip install 'g2d[{name}]'")


# W&B's run modes (wandb.Settings.mode); g2d's default is offline.
WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")


def wandb_mode(config: ExperimentConfig) -> str:
    """``trainer.wandb.mode``, else ``WANDB_MODE``, else offline."""
    return config.trainer.wandb.mode or os.environ.get("WANDB_MODE") or "offline"


def check_wandb_mode(config: ExperimentConfig) -> None:
    """A W&B mode W&B does not know is refused before anything runs (W&B itself only warns, mid-run)."""
    if "wandb" not in config.trainer.loggers or wandb_mode(config) in WANDB_MODES:
        return
    where = "config key trainer.wandb.mode" if config.trainer.wandb.mode else "environment variable WANDB_MODE"
    raise G2DError(f"{where}: {wandb_mode(config)!r} is not a W&B mode (choose one of {', '.join(WANDB_MODES)})")


def read_ids(folder: Path) -> dict[str, Any]:
    """The backends' ids stored in ``folder/tracking.json`` ({} when there is none or it is unreadable)."""
    try:
        return json.loads((folder / TRACKING_FILE).read_text())
    except (OSError, ValueError):
        return {}


def epoch_metrics(record: dict, modulator: Any = None) -> dict[str, float]:
    """The per-epoch numbers of one history record, under the names in the module docstring."""
    metrics = {f"train/{name}": value for name, value in record["train"].items()}
    metrics.update({f"val/multimodal/{name}": value for name, value in record["val"]["multimodal"].items()})
    for modality, values in record["val"]["per_modality"].items():
        metrics.update({f"val/{modality}/{name}": value for name, value in values.items()})
    metrics.update({EPOCH_KEY: record["lr"], "epoch_seconds": record["seconds"]})
    if modulator is not None:
        phase, allowed = smp_choice(modulator, record["epoch"], record["train"])
        metrics["smp/phase"] = phase
        metrics.update({f"smp/allowed/{m}": value for m, value in allowed.items()})
        if modulator.dataset_confidence is not None:
            confidence = modulator.dataset_confidence.tolist()
            metrics.update({f"teacher/{m}/train_confidence": c for m, c in zip(modulator.modalities, confidence)})
    return {name: float(value) for name, value in metrics.items()}


def numbers(tree: Any, prefix: str) -> dict[str, float]:
    """Every finite number in a nested dict, named by its path below ``prefix`` (``test/multimodal/accuracy``)."""
    if isinstance(tree, dict):
        found: dict[str, float] = {}
        for key, value in tree.items():
            found.update(numbers(value, f"{prefix}/{key}"))
        return found
    if isinstance(tree, (int, float)) and not isinstance(tree, bool) and math.isfinite(tree):
        return {prefix: float(tree)}
    return {}


def final_metrics(metrics: dict) -> dict[str, float]:
    """The end-of-run numbers of a metrics.json: every test number (all selection rules it holds), the
    chosen epoch's validation metrics, the teachers' test metrics, best epoch and wall time."""
    found = {**numbers(metrics.get("test", {}), "test"), **numbers(metrics.get("val", {}), "best_val"),
             **numbers(metrics.get("teachers", {}), "teachers")}
    found.update({key: float(metrics[key]) for key in ("best_epoch", "wall_seconds") if key in metrics})
    return found


class Tracking:
    """The run's backends behind one call per epoch; a backend that fails is warned about once and dropped.

    Empty until ``start``; as a context manager it ends the tracked runs, as failed when the block raised.
    """

    def __init__(self) -> None:
        self.backends: dict[str, Backend] = {}
        self.run_dir: Path | None = None

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        self.close(ok=kind is None)

    def start(self, config: ExperimentConfig, run_dir: Path, tags: dict[str, str] | None = None,
              teachers: dict[str, dict] | None = None) -> Tracking:
        """Open (resuming: reopen) every backend of ``trainer.loggers`` for the run in ``run_dir``; ``teachers``
        holds each teacher's tracking.json, to link its tracked run."""
        stored = read_ids(run_dir) if config.trainer.resume else {}
        tags = {"g2d.run_dir": str(run_dir.resolve()), **(tags or {})}
        self.run_dir = run_dir
        for name in config.trainer.loggers:
            info = RunInfo(run_dir, config, tags, stored.get(name, {}), teachers or {})
            try:
                with patient_requests():
                    self.backends[name] = BACKENDS[name](info)
            except Exception as exc:  # an unreachable store must not stop the run
                warn(name, exc)
        # A backend that could not reopen keeps its stored id, for the next resume.
        ids = {**stored, **{name: backend.ids() for name, backend in self.backends.items()}}
        if any(ids.values()):
            write_json(run_dir / TRACKING_FILE, ids)
        return self

    def call(self, action: Callable[[Backend], Any]) -> None:
        """``action(backend)`` for each backend; one that raises is warned about and dropped."""
        for name, backend in list(self.backends.items()):
            try:
                with patient_requests():
                    action(backend)
            except Exception as exc:  # a failing store never stops training
                warn(name, exc)
                del self.backends[name]

    def replay(self, history: list[dict], modulator: Any = None) -> None:
        """On resume, send the checkpointed epochs a backend does not hold yet (killed before it logged them)."""
        def send(backend: Backend) -> None:
            last = backend.last_step()
            for record in history:
                if last is not None and record["epoch"] > last:
                    backend.log_metrics(epoch_metrics(record, modulator), record["epoch"])
        self.call(send)

    def epoch(self, record: dict, modulator: Any = None) -> None:
        """One epoch's record (``g2d.training.engine``'s history entry), at step = its epoch."""
        metrics = epoch_metrics(record, modulator)
        self.call(lambda backend: backend.log_metrics(metrics, record["epoch"]))
        for observer in EPOCH_OBSERVERS:
            observer(self.run_dir, record)

    def finish(self, metrics: dict, files: list[Path], extra: dict[str, float] | None = None) -> None:
        """The end-of-run numbers of ``metrics`` (metrics.json) and ``extra`` at step ``epochs``; ``files`` as artifacts."""
        values = {**final_metrics(metrics), **(extra or {})}
        self.call(lambda backend: backend.log_metrics(values, int(metrics.get("epochs", 0))))
        self.call(lambda backend: backend.log_files([f for f in files if f.is_file()], ""))

    def close(self, ok: bool) -> None:
        """End every tracked run (``ok``: finished, else failed)."""
        self.call(lambda backend: backend.close(ok))
        self.backends = {}


# The warnings given in this process: a store that fails for a student and each of its teachers is one line.
WARNED: set[str] = set()


def warn(name: str, exc: Exception) -> None:
    """One line, once per process, for a backend that failed and is dropped."""
    line = (f"tracking: the {name} logger failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); the run goes on without it")
    if line not in WARNED:
        WARNED.add(line)
        logger.warning("%s", line)


def attach_files(run_dir: Path, files: list[Path], folder: str) -> None:
    """Add files written after training (``g2d analyze``, ``g2d report``) to the run's tracked runs, if any."""
    stored = read_ids(run_dir)
    if not stored:
        return
    try:
        config = load_config(run_dir / "config.yaml", ["trainer.resume=true"])
    except G2DError as exc:
        logger.warning("tracking: %s not attached (%s)", run_dir, exc)
        return
    config.trainer.loggers = [name for name in config.trainer.loggers if name in stored and name in ("mlflow", "wandb")]
    with Tracking().start(config, run_dir) as tracking:
        tracking.call(lambda backend: backend.log_files(files, folder))


def start_sweep(config: ExperimentConfig, out: Path, labels: list[str]) -> list[str]:
    """The overrides that gather a sweep's runs in its trackers: one MLflow store in ``out`` (unless configured)
    with a parent run (reopened when the sweep continues) whose children they are, and ``out``'s name as the W&B
    group. ``labels``: the sweep's configurations, recorded on the parent."""
    overrides = []
    name = out.resolve().name
    if "wandb" in config.trainer.loggers and not config.trainer.wandb.group:
        overrides.append(f"trainer.wandb.group={name}")
    if "mlflow" not in config.trainer.loggers or config.trainer.mlflow.parent_run_id:
        return overrides
    settings = config.trainer.mlflow
    uri = settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out.resolve() / 'mlflow.db'}"
    try:
        with patient_requests():
            client = mlflow_client(uri)
            run_id = read_ids(out).get("mlflow", {}).get("run_id")
            if run_id is None:
                experiment = mlflow_experiment(client, settings.experiment, uri)
                tags = {"g2d.role": "sweep", "g2d.run_dir": str(out.resolve())}
                run_id = client.create_run(experiment, run_name=name, tags=tags).info.run_id
                client.log_param(run_id, "sweep.configurations", " | ".join(labels)[:6000])
        write_json(out / TRACKING_FILE, {"mlflow": {"run_id": run_id, "tracking_uri": uri}})
    except Exception as exc:  # the sweep runs untracked rather than not at all
        warn("mlflow", exc)
        return overrides
    return [*overrides, f"trainer.mlflow.tracking_uri={uri}", f"trainer.mlflow.parent_run_id={run_id}"]


def finish_sweep(out: Path, files: list[Path]) -> None:
    """Attach the sweep's tables (mean ± std) to its MLflow parent run and end it."""
    stored = read_ids(out).get("mlflow")
    if not stored:
        return
    try:
        with patient_requests():
            client = mlflow_client(stored["tracking_uri"])
            for path in files:
                client.log_artifact(stored["run_id"], str(path))
            client.set_terminated(stored["run_id"], "FINISHED")
    except Exception as exc:
        warn("mlflow", exc)
