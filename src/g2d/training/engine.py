"""The one training loop: steps, modulation, per-epoch evaluation, checkpoints and resume.

The step makes no host synchronization: losses, accuracy and SMP coefficients are
accumulated on the device and read once per epoch; SMP's choice is a tensor multiplied into
gradients. After each epoch a checkpoint is committed as one unit (``g2d.training.checkpoint``), so a
run killed at any instant resumes (``trainer.resume=true``) to the same weights as an
uninterrupted one. How batches
are fed and steps run (the reference path or the fast one) is ``g2d.training.fast``'s business.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from g2d.config import SELECTION_RULES, ExperimentConfig, OptimConfig, to_dict
from g2d.core.losses import teacher_confidence
from g2d.core.optimizers import OPTIMIZERS
from g2d.core.smp import SMP, phase_of
from g2d.data.base import Batches, MultimodalData, to_device
from g2d.errors import G2DError
from g2d.io import load_weights
from g2d.methods.base import Method, MethodContext, TeacherOutputs
from g2d.models.pretrained import scale_learning_rates
from g2d.training import checkpoint, distributed
from g2d.training.evaluate import evaluate, selection_score
from g2d.training.fast import TrainingPath, plan_training, prepare_modules
from g2d.training.tracking import Tracking

logger = logging.getLogger("g2d")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, as every run does before building its model."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise G2DError(f"config key trainer.device: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise G2DError(f"config key trainer.device: {name!r} asks for CUDA, which this machine does not have "
                       "(use auto or cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise G2DError(f"config key trainer.device: {name!r}, but this machine has "
                       f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def parameter_groups(model: nn.Module) -> list[dict]:
    """One named param group per encoder (``encoder:<m>``), one for the fusion, one for method modules."""
    groups = []
    seen: set[int] = set()
    named = [(f"encoder:{m}", model.encoders[m]) for m in model.modalities] + [("fusion", model.fusion)]
    if getattr(model, "method_modules", None) is not None:
        named.append(("method", model.method_modules))
    for name, module in named:
        params = [p for p in module.parameters() if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        if params:
            groups.append({"name": name, "params": params})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    if rest:
        groups.append({"name": "other", "params": rest})
    return groups


def build_optimizer(model: nn.Module, config: OptimConfig, **options: Any) -> torch.optim.Optimizer:
    """The configured optimizer over named param groups; ``options`` select its implementation
    (``foreach``, ``fused``, ``capturable``), which the fast path sets."""
    groups = scale_learning_rates(parameter_groups(model), getattr(model, "lr_scales", {}), config.lr)
    return OPTIMIZERS[config.name](groups, config, **options)


class TeacherEnsemble(nn.Module):
    """Frozen unimodal teachers, run in eval mode without gradients."""

    def __init__(self, teachers: dict[str, nn.Module]) -> None:
        super().__init__()
        self.teachers = nn.ModuleDict(teachers)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, inputs: dict[str, torch.Tensor]) -> TeacherOutputs:
        self.eval()
        features, logits = {}, {}
        for modality, teacher in self.teachers.items():
            output = teacher(inputs)
            features[modality] = output.features[modality]
            logits[modality] = output.logits
        return TeacherOutputs(features=features, logits=logits)


@torch.no_grad()
def dataset_confidence(
    teachers: TeacherEnsemble, data: MultimodalData, device: torch.device, batch_size: int
) -> torch.Tensor:
    """Teachers' confidence (Eq. 5) averaged over the whole training split, ``[k]``."""
    modalities = list(teachers.teachers)
    total = torch.zeros(len(modalities), device=device)
    for batch in Batches(data.splits["train"], batch_size, shuffle=False):
        inputs = to_device(batch, data, device)
        logits = teachers(inputs).stacked_logits(modalities)
        total += teacher_confidence(logits, inputs["label"], data.task) * len(inputs["label"])
    return distributed.broadcast_tensor(total / data.size("train"))


@dataclass
class FitResult:
    """What a finished run knows: the epoch chosen by ``trainer.select``, its validation metrics, the history,
    and each selection rule's epoch and test metrics (``selection``)."""

    best_epoch: int
    best_val: dict
    history: list[dict] = field(default_factory=list)
    wall_seconds: float = 0.0
    path: dict = field(default_factory=dict)
    selection: dict = field(default_factory=dict)


def prepare_training(
    model: nn.Module,
    method: Method,
    data: MultimodalData,
    config: ExperimentConfig,
    device: torch.device,
    batches: Batches,
    teachers: TeacherEnsemble | None = None,
    modulator: SMP | None = None,
) -> tuple[torch.optim.Optimizer, TrainingPath]:
    """Place the model and teachers, build the optimizer and the training path, and set the method up."""
    plan = plan_training(config, device, method, data, teachers)
    distributed.adjust_plan(plan)
    model.to(device)
    if teachers is not None:
        teachers.to(device)
    prepare_modules(plan, model, teachers)
    optimizer = build_optimizer(model, config.optim, **plan.optimizer_options())
    if modulator is not None:
        modulator.host_freeze = plan.host_freeze
    path = TrainingPath(plan, method, data, batches, teachers, modulator, optimizer, config.trainer.eval_batch_size)
    # The method steps through DDP when several processes train; everything else holds the model itself.
    method.setup(MethodContext(model=distributed.wrap_model(model, device), optimizer=optimizer, data=data,
                               device=device, config=config, teachers=path.teachers, modulator=modulator,
                               mean_across_processes=distributed.mean_across_ranks))
    path.log()
    return optimizer, path


def fit(
    model: nn.Module,
    method: Method,
    data: MultimodalData,
    config: ExperimentConfig,
    run_dir: Path,
    teachers: TeacherEnsemble | None = None,
    modulator: SMP | None = None,
    device: torch.device | None = None,
    tracking: Tracking | None = None,
) -> FitResult:
    """Train ``model`` with ``method`` for ``trainer.epochs``; keep the best validation epoch's weights.

    Each epoch's record goes to ``tracking`` (``g2d.training.tracking``; by default the backends of
    ``trainer.loggers``, opened and closed here) on rank 0, after its checkpoint is committed.

    Each batch goes through ``path.step`` (``g2d.training.fast``: the reference path, or the fast one that
    may replay it from a CUDA graph) to the training step itself, ``Method.train_step``.
    """
    device = device or select_device(config.trainer.device)
    train = dict(data.splits["train"])  # its arrays are replaced each epoch when the data redraws them
    batches = distributed.shard_batches(Batches(train, config.trainer.batch_size, shuffle=True,
                                                seed=config.seed, drop_last=config.trainer.drop_last))
    if len(batches) == 0:
        processes = f" times {distributed.world_size()} processes" if distributed.world_size() > 1 else ""
        raise G2DError(
            f"config key trainer.batch_size: {config.trainer.batch_size}{processes} is larger than the "
            f"{batches.size} training rows of {data.name}"
        )
    optimizer, path = prepare_training(model, method, data, config, device, batches, teachers, modulator)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.optim.lr_step, gamma=config.optim.lr_gamma)
    checkpoints = run_dir / checkpoint.LINK
    state = {"epoch": 0, "history": [], "best_epoch": -1, "best_score": -math.inf, "best_val": {}, "wall": 0.0,
             "selection": {rule: {"epoch": -1, "score": -math.inf, "test": {}} for rule in SELECTION_RULES}}
    saved = distributed.from_main(checkpoint.committed(run_dir) if config.trainer.resume else None)
    if saved is not None:
        state = resume(saved, model, optimizer, scheduler, config, method)
        if modulator is not None:
            modulator.load_state_dict(state.get("smp", {}))
    main = distributed.is_main()  # rank 0 alone writes logs and checkpoints
    owned = tracking is None
    if tracking is None:
        tracking = Tracking().start(config, run_dir) if main else Tracking()
    if saved is not None:
        tracking.replay(state["history"], modulator)
    epochs = config.trainer.epochs
    config_json = json.dumps(to_dict(config), sort_keys=True)  # once: converting the config costs ~70 ms
    bar = tqdm(range(state["epoch"], epochs), desc=f"{method.name} {run_dir.name}", unit="epoch", initial=state["epoch"],
               total=epochs, disable=None if config.trainer.progress and main else True, leave=False)
    try:
        for epoch in bar:
            started = time.perf_counter()
            if data.redraw is not None:
                train.update(data.redraw(epoch))
            method.on_epoch_start(epoch)
            model.train()
            sums: dict[str, torch.Tensor] = {}
            seen = 0
            for batch in path.batches(epoch):
                rows = len(next(iter(batch.values())))
                terms = path.step(batch, epoch)
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + value.float() * rows
                seen += rows
            scheduler.step()
            names = list(sums)
            values = distributed.mean_across_ranks(torch.stack([sums[n] for n in names]) / seen).tolist()
            train_stats = dict(zip(names, values))
            if not all(math.isfinite(v) for v in train_stats.values()):
                kept = (f"the last good checkpoint (epoch {state['epoch']}) is kept in {checkpoints}"
                        if state["epoch"] else "no checkpoint was written")
                raise G2DError(f"epoch {epoch}: training produced a non-finite value ({train_stats}); {kept}")
            val = evaluate(model, data, "val", device, config.trainer.eval_batch_size, method)
            test = evaluate(model, data, "test", device, config.trainer.eval_batch_size, method)
            method.on_epoch_end(epoch, val)
            score = selection_score(val, data.task)
            seconds = time.perf_counter() - started
            state["wall"] += seconds
            record = {"epoch": epoch, "train": train_stats, "val": val, "test": test,
                      "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3)}
            if modulator is not None:
                record["smp_phase"] = phase_of(epoch, modulator.tau)
                modulator.end_epoch(epoch, val, data.task)
                state["smp"] = modulator.state_dict()
            state["history"].append(record)
            update_selection(state["selection"], epoch, val, test, data.task)
            chosen = state["selection"][config.trainer.select]
            if chosen["epoch"] == epoch:
                state.update(best_epoch=epoch, best_score=chosen["score"], best_val=val)
            state["epoch"] = epoch + 1
            if main:
                save_checkpoint(checkpoints, model, optimizer, scheduler, state, config_json, method)
                tracking.epoch(record, modulator)
            bar.set_postfix(loss=f"{train_stats['loss']:.3f}", val=f"{score:.3f}")
            if bar.disable and config.trainer.progress:
                log_progress(method.name, run_dir, record, epochs, score)
    finally:
        path.close()
        if owned:
            tracking.close(ok=state["epoch"] == epochs)
        bar.close()
    if main:
        load_weights(checkpoints / "best.safetensors", model)
    distributed.broadcast_module(model)
    selection = {rule: {"best_epoch": chosen["epoch"], "test": chosen["test"]} for rule, chosen in state["selection"].items()}
    return FitResult(state["best_epoch"], state["best_val"], state["history"], state["wall"], path.summary(), selection)


def update_selection(selection: dict, epoch: int, val: dict, test: dict, task: str) -> None:
    """Track the epoch each rule (``trainer.select``) keeps and its test metrics: the best validation
    score, the last epoch, or the best test score (the authors' rule, optimistic: it selects on test)."""
    scores = {"val": selection_score(val, task), "last": float(epoch), "test": selection_score(test, task)}
    for rule, score in scores.items():
        if score > selection[rule]["score"]:
            selection[rule].update(epoch=epoch, score=score, test=test)


def log_progress(name: str, run_dir: Path, record: dict, epochs: int, score: float) -> None:
    """One line per epoch where no progress bar is drawn (output is a log file or CI)."""
    logger.info("%s %s: epoch %d/%d, loss %.4f, val %.4f, %.1f s", name, run_dir.name, record["epoch"] + 1,
                epochs, record["train"]["loss"], score, record["seconds"])


def save_checkpoint(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, state: dict,
    config_json: str, method: Method,
) -> None:
    """Commit weights, best weights and the loop's state as one unit (``g2d.training.checkpoint``) in ``folder``'s run;
    ``config_json`` is the run's config as sorted JSON (what a resume compares)."""
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    device = next(model.parameters()).device
    payload = {
        "state": state,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "method": method.state_dict(),
        "rng": checkpoint.rng_states(device),
        "config": config_json,
        "processes": distributed.world_size(),
    }
    best_changed = state["best_epoch"] == state["epoch"] - 1
    checkpoint.save(folder.parent, state["epoch"], weights, best_changed, payload)


def resume(
    folder: Path, model: nn.Module, optimizer: Any, scheduler: Any, config: ExperimentConfig, method: Method
) -> dict:
    """Restore the loop from the committed checkpoint ``folder``; the config must match the interrupted run's
    (``checkpoint.check_resume`` says which differences are allowed) and its files the bytes it recorded."""
    checkpoint.verify(folder)
    payload = checkpoint.read_state(folder)
    checkpoint.check_resume(json.loads(payload["config"]), config, folder / checkpoint.STATE)
    processes = payload.get("processes", 1)
    if processes != distributed.world_size():
        raise G2DError(
            f"{folder / checkpoint.STATE}: the interrupted run trained on {processes} process(es) and this one on "
            f"{distributed.world_size()}; resume with the same number (the batches each step sees depend on it)"
        )
    load_weights(folder / "last.safetensors", model)
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    method.load_state_dict(payload.get("method", {}))
    checkpoint.restore_rng(payload["rng"])
    return payload["state"]
