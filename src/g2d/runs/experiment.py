"""One experiment end to end: data, teachers (trained when missing), model, method, SMP, fit, report.

The run folder holds ``config.yaml``, ``metrics.json`` (the schema in DESIGN.md),
``history.json`` (per-epoch train and validation metrics), ``checkpoints/`` and ``tb/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import torch

from g2d.config import ExperimentConfig
from g2d.core.smp import Modulator
from g2d.data import MultimodalData, load_dataset
from g2d.data.augment import check_augmentable, normalize_visual
from g2d.errors import G2DError
from g2d.io import load_weights, read_metrics, write_json
from g2d.methods import Method, check_task
from g2d.methods.build import build_model
from g2d.models.multimodal import MultimodalModel
from g2d.runs import check, runfolder, sanity
from g2d.training import checkpoint, distributed
from g2d.training.engine import (
    TeacherEnsemble,
    dataset_confidence,
    fit,
    seed_everything,
    select_device,
)
from g2d.training.epochs import record_epochs
from g2d.training.evaluate import evaluate
from g2d.training.tracking import Tracking, mlflow_uri, read_ids
from g2d.training.threads import budget, fit_threads_to_model, use_threads
from g2d.training.teachers import (
    as_modules,
    ensure_teachers,
    existing_teacher_metrics,
    existing_teachers,
    expected_metadata,
    output_size,
    save_teacher,
    teacher_dir,
    teacher_summary,
)

logger = logging.getLogger("g2d")


def run(config: ExperimentConfig | check.Checked, data: MultimodalData | None = None,
        teacher_of: str | None = None) -> dict:
    """Train and evaluate one configured experiment; returns what it writes to metrics.json.

    ``config`` is checked by ``g2d.runs.check.preflight`` here, unless it is the ``Checked`` that
    preflight returned. ``teacher_of`` marks a unimodal teacher run, whose weights are then saved as
    a teacher artifact for ``config``'s parent experiment. Everything that can be checked is checked
    before the run folder is claimed (``g2d.runs.runfolder``) and written.
    """
    checked = config if isinstance(config, check.Checked) else check.preflight(config, "run")
    config = checked.config
    if data is not None and not isinstance(data, MultimodalData):
        raise G2DError(f"run(data=...): must be the MultimodalData of g2d.load_dataset(config.dataset), or None, got "
                       f"{type(data).__name__}")
    use_threads(config.trainer.threads)
    device = distributed.setup(select_device(config.trainer.device))
    # Encoder settings are checked against every modality the dataset has, selected or not, so one
    # config can hold them all while dataset.modalities picks a subset.
    data = data if data is not None else load_dataset(dataclasses.replace(config.dataset, modalities=[]))
    sanity.check_encoders(config, data)
    if config.dataset.modalities:
        data = data.select(config.dataset.modalities)
    if config.dataset.normalize and teacher_of is None:  # data a caller passed in sees what load_dataset gives
        data = normalize_visual(data)
    if config.dataset.augment:
        if teacher_of is None:  # a teacher of one modality trains whatever that modality is, augmented or not
            check_augmentable(data, "dataset.augment")
        data.deterministic = False  # a row's teacher outputs change with its crop: no teacher cache
    if teacher_of is None:
        check.check_data(config, data)
    modalities = list(data.modalities)
    check_task(checked.method, data.task)
    method = checked.method(checked.params, data.task, modalities)
    smp_enabled = checked.smp
    check_pretrained_encoders(config, data)
    if smp_enabled:
        sanity.check_smp_window(config, len(modalities))
    if teacher_of is None:
        sanity.warn_unseen_classes(data)
        sanity.warn_unused_smp_settings(config, smp_enabled)
    with claimed_run_folder(config) as claim, Tracking() as tracking:
        if claim.finished:
            return finished_run(config, data, teacher_of)
        metrics = train_and_report(config, data, teacher_of, method, smp_enabled, device, claim, tracking)
    return metrics


def train_teachers(config: ExperimentConfig) -> dict[str, Path]:
    """Train the unimodal teachers ``config``'s run would use (those missing; existing ones are checked),
    as the CLI does; returns each modality's teacher folder, for ``g2d.load_teacher``."""
    config = check.preflight(config, "train_teachers").config
    data = load_dataset(dataclasses.replace(config.dataset, modalities=[]))
    sanity.check_encoders(config, data)
    if config.dataset.modalities:
        data = data.select(config.dataset.modalities)
    check.check_data(config, data)
    ensure_teachers(config, data, lambda cfg, m: run(cfg, data.select([m]), teacher_of=m))
    return {m: teacher_dir(config, m) for m in data.modalities}


@contextlib.contextmanager
def claimed_run_folder(config: ExperimentConfig) -> Iterator[runfolder.Claim]:
    """Rank 0 locks and checks the run folder (``g2d.runs.runfolder.claim``); under torchrun the other
    processes follow its verdict, a refusal included, and never write there."""
    if distributed.world_size() == 1:
        with runfolder.claim(config) as claim:
            yield claim
        return
    if distributed.is_main():
        with contextlib.ExitStack() as stack:
            try:
                claim = stack.enter_context(runfolder.claim(config))
            except G2DError as exc:
                distributed.from_main(str(exc))
                raise
            distributed.from_main(claim.finished)
            yield claim
        return
    verdict = distributed.from_main(None)
    if isinstance(verdict, str):
        raise G2DError(verdict)
    yield runfolder.Claim(folder=config.run_dir(), lock=None, finished=verdict)


def train_and_report(config: ExperimentConfig, data: MultimodalData, teacher_of: str | None, method: Method,
                     smp_enabled: bool, device: torch.device, claim: runfolder.Claim, tracking: Tracking) -> dict:
    """The run itself, in its claimed folder: teachers, model, SMP, fit, test, and the result files; rank 0
    starts ``tracking`` once the folder is claimed and sends it every epoch and the end-of-run numbers."""
    modalities = list(data.modalities)
    run_dir = claim.folder
    teachers = None
    if method.uses_teachers or smp_enabled:
        loaded = ensure_teachers(config, data, lambda cfg, m: run(tracked_teacher(cfg, config), data.select([m]),
                                                                   teacher_of=m))
        teachers = TeacherEnsemble(as_modules(loaded)).to(device)
        teacher_metrics = teacher_summary(loaded)
    else:
        teacher_metrics = existing_teacher_metrics(config, data)

    seed_everything(config.seed)
    model = build_model(data.modalities, config.model, output_size(data), method)
    if device.type == "cpu":
        fit_threads_to_model(config.trainer.threads, model, data, config.trainer.batch_size)
    modulator = None
    smp_report: dict = {"enabled": smp_enabled}
    if smp_enabled:
        encoders = {m: model.encoder_parameters(m) for m in modalities}
        modulator = Modulator(config.smp, encoders, config.trainer.epochs)
        smp_report.update(asdict(config.smp), enabled=True, tau=modulator.tau)
        if modulator.needs_dataset_confidence:
            assert teachers is not None
            confidence = dataset_confidence(teachers, data, device, config.trainer.eval_batch_size)
            modulator.set_dataset_confidence(confidence)
            smp_report["dataset_confidence"] = dict(zip(modalities, confidence.tolist()))
            smp_report["ranking"] = modulator.ranking()

    if distributed.is_main():
        claim.begin(config)
        tags = {"g2d.role": "teacher" if teacher_of else "student", "g2d.method": method.name, "g2d.dataset": data.name,
                **({"g2d.teacher_of": teacher_of} if teacher_of else {})}
        tracking.start(config, run_dir, tags, {m: read_ids(teacher_dir(config, m)) for m in modalities} if teachers else {})
    result = fit(model, method, data, config, run_dir, teachers, modulator, device, tracking)
    if modulator is not None:
        smp_report["tau"] = modulator.tau
        if modulator.auto is not None:
            smp_report.update(modulator.auto_report(len(result.history)))
    started = time.perf_counter()
    test = evaluate(model, data, "test", device, config.trainer.eval_batch_size, method)
    wall_seconds = result.wall_seconds + time.perf_counter() - started
    metrics = {
        "dataset": data.name,
        "method": "teacher" if teacher_of else method.name,
        "task": data.task,
        "modalities": modalities,
        "fusion": config.model.fusion,
        "seed": config.seed,
        "epochs": config.trainer.epochs,
        "best_epoch": result.best_epoch,
        "wall_seconds": round(wall_seconds, 2),
        "test": test,
        "val": result.best_val,
        "selection": {"rule": config.trainer.select, "optimistic": config.trainer.select == "test",
                      **result.selection},
        "teachers": teacher_metrics,
        "smp": smp_report,
        "method_params": asdict(method.params),
        "environment": {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
                        "training_path": result.path, "processes": distributed.world_size(),
                        "threads": torch.get_num_threads(), "thread_budget": budget()},
    }
    if distributed.is_main():
        write_json(run_dir / "history.json", result.history)
        rows = record_epochs(run_dir, result.history, data, as_modules(loaded) if teachers is not None else
                             existing_teachers(config, data), modulator, device, config.trainer.eval_batch_size,
                             tensorboard="tensorboard" in config.trainer.loggers)
        write_json(run_dir / "metrics.json", metrics)
        if teacher_of is not None:
            metadata = expected_metadata(config, data, teacher_of)
            metadata.update(epochs=config.trainer.epochs, best_epoch=result.best_epoch,
                            val=result.best_val["multimodal"], test=test["multimodal"])
            save_teacher(model.cpu(), run_dir, metadata)
        tracking.finish(metrics, [run_dir / "metrics.json"], {f"teacher/{row['modality']}/val_confidence": row[
            "teacher_val_confidence"] for row in rows if row["teacher_val_confidence"] != ""})
    distributed.barrier()  # no process goes on (to load this teacher, say) before rank 0 has written
    return metrics


def tracked_teacher(teacher: ExperimentConfig, student: ExperimentConfig) -> ExperimentConfig:
    """A teacher run logs to its student's MLflow store (its own default would sit in the teachers folder)."""
    if "mlflow" in teacher.trainer.loggers:
        teacher.trainer.mlflow.tracking_uri = mlflow_uri(student, student.run_dir())
    return teacher


def finished_run(config: ExperimentConfig, data: MultimodalData, teacher_of: str | None) -> dict:
    """Resuming a run that already trained all its epochs changes nothing; a teacher whose run finished
    but whose artifact was not yet written (a crash in between) gets it from the best checkpoint."""
    run_dir = config.run_dir()
    metrics = read_metrics(run_dir)
    if teacher_of is not None and not (run_dir / "teacher.json").is_file():
        model = MultimodalModel(data.modalities, config.model, output_size(data))
        checkpoint.verify(run_dir / checkpoint.LINK)
        load_weights(run_dir / checkpoint.LINK / "best.safetensors", model)
        metadata = expected_metadata(config, data, teacher_of)
        metadata.update(epochs=config.trainer.epochs, best_epoch=metrics["best_epoch"],
                        val=metrics["val"]["multimodal"], test=metrics["test"]["multimodal"])
        save_teacher(model, run_dir, metadata)
    logger.info("%s: finished at %s epochs already; nothing to resume (a larger trainer.epochs extends it)",
                run_dir, metrics.get("epochs"))
    return metrics


def check_pretrained_encoders(config: ExperimentConfig, data: MultimodalData) -> None:
    """Build the model once when an encoder starts from a weights file or a model folder, so a file
    that does not fit is refused before any folder is written; the global RNG is left untouched."""
    if not any(config.model.encoder_for(m).weights or config.model.encoder_for(m).path for m in data.modalities):
        return
    with torch.random.fork_rng(devices=[]):
        MultimodalModel(data.modalities, config.model, output_size(data))
