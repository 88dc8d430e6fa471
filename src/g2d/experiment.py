"""One experiment end to end: data, teachers (trained when missing), model, method, SMP, fit, report.

The run folder holds ``config.yaml``, ``metrics.json`` (the schema in DESIGN.md),
``history.json`` (per-epoch train and validation metrics), ``checkpoints/`` and ``tb/``.
"""

from __future__ import annotations

import json
import platform
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from g2d import distributed
from g2d.config import ExperimentConfig, to_dict
from g2d.data import MultimodalData, load_dataset
from g2d.engine import TeacherEnsemble, dataset_confidence, fit, select_device
from g2d.io import write_json
from g2d.errors import G2DError
from g2d.evaluate import evaluate
from g2d.methods import build_method
from g2d.methods.smp import Modulator
from g2d.models.multimodal import MultimodalModel
from g2d.teachers import (
    as_modules,
    ensure_teachers,
    expected_metadata,
    load_teacher,
    output_size,
    save_teacher,
    teacher_dir,
    teacher_summary,
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run(config: ExperimentConfig, data: MultimodalData | None = None, teacher_of: str | None = None) -> dict:
    """Train and evaluate one configured experiment; returns what it writes to metrics.json.

    ``teacher_of`` marks a unimodal teacher run, whose weights are then saved as a teacher
    artifact for ``config``'s parent experiment.
    """
    data = data if data is not None else load_dataset(config.dataset)
    if config.dataset.modalities:
        data = data.select(config.dataset.modalities)
    modalities = list(data.modalities)
    method = build_method(config.method, data.task, modalities)
    smp_enabled = method.smp_by_default if config.smp.enabled is None else config.smp.enabled
    device = distributed.setup(select_device(config.trainer.device))
    distributed.check_method(method)
    main = distributed.is_main()  # rank 0 alone writes the run folder
    run_dir = config.run_dir()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)

    teachers = None
    if method.uses_teachers or smp_enabled:
        loaded = ensure_teachers(config, data, lambda cfg, m: run(cfg, data.select([m]), teacher_of=m))
        teachers = TeacherEnsemble(as_modules(loaded)).to(device)
        teacher_metrics = teacher_summary(loaded)
    else:
        teacher_metrics = existing_teacher_metrics(config, data)

    seed_everything(config.seed)
    model = MultimodalModel(data.modalities, config.model, output_size(data))
    model.method_modules = method.build_modules(model.feature_dims, model.num_outputs)
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

    if main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(to_dict(config)))
    result = fit(model, method, data, config, run_dir, teachers, modulator, device)
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
        "teachers": teacher_metrics,
        "smp": smp_report,
        "method_params": asdict(method.params),
        "environment": {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
                        "training_path": result.path, "processes": distributed.world_size()},
    }
    if main:
        write_json(run_dir / "history.json", result.history)
        write_json(run_dir / "metrics.json", metrics)
        if teacher_of is not None:
            metadata = expected_metadata(config, data, teacher_of)
            metadata.update(seed=config.seed, epochs=config.trainer.epochs, best_epoch=result.best_epoch,
                            val=result.best_val["multimodal"], test=test["multimodal"])
            save_teacher(model.cpu(), run_dir, metadata)
    distributed.barrier()  # no process goes on (to load this teacher, say) before rank 0 has written
    return metrics


def existing_teacher_metrics(config: ExperimentConfig, data: MultimodalData) -> dict[str, dict]:
    """Teachers' test metrics for a run that does not use teachers, where matching ones exist."""
    found = {}
    for modality in data.modalities:
        if (teacher_dir(config, modality) / "teacher.json").is_file():
            try:
                found[modality] = load_teacher(config, data, modality)[1].get("test", {})
            except G2DError:
                continue
    return found


def read_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise G2DError(f"metrics file not found: {path}") from exc
