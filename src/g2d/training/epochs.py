"""The per-epoch tidy table of a run, ``epochs.csv``: one row per epoch and modality.

Each row holds what the paper's training-time figures plot: the student's per-modality
validation metrics (accuracy or MSE, confidence of Eq. 5), the teacher's confidence on the
same validation split (fixed teachers, so constant over epochs), SMP's phase and whether the
modality was allowed to learn, the mean kappa of that modality over the epoch's steps, the
multimodal validation metrics and the epoch's training loss terms. It is built after training
from ``history.json`` records, so the training step itself is untouched; teacher confidence and
SMP's choice also go to TensorBoard under ``analysis/``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from g2d.core.smp import Modulator, phase_of, priority_mask
from g2d.data.base import Batches, MultimodalData, to_device
from g2d.io import atomic_write

KAPPA_PREFIX = "kappa/"


@torch.no_grad()
def split_confidence(
    teachers: dict[str, torch.nn.Module], data: MultimodalData, split: str, device: torch.device, batch_size: int
) -> dict[str, float]:
    """Each teacher's confidence (Eq. 5) over a whole split: mean probability of the true class
    (``1 - mean |error|`` for regression)."""
    from g2d.training.evaluate import metrics_for

    result = {}
    for modality, teacher in teachers.items():
        teacher.to(device).eval()
        logits, labels = [], []
        for batch in Batches(data.splits[split], batch_size, shuffle=False):
            inputs = to_device(batch, data, device)
            logits.append(teacher(inputs).logits.float())
            labels.append(inputs["label"])
        result[modality] = metrics_for(torch.cat(logits), torch.cat(labels), data)["confidence"]
    return result


def smp_choice(modulator: Modulator | None, epoch: int, train: dict[str, float]) -> tuple[int, dict[str, float]]:
    """SMP's phase in ``epoch`` (-1 without SMP, ``k - 1`` once all modalities train) and, per
    modality, whether it was allowed to learn (1/0; for the dynamic schedule, which decides per
    batch, and for partial modulation, the epoch's mean kappa)."""
    if modulator is None:
        return -1, {}
    phase = phase_of(epoch, modulator.tau)
    ranked = modulator.config.schedule == "ranked" and modulator.config.modulator == "complete"
    if ranked and modulator.dataset_confidence is not None:
        mask = priority_mask(modulator.dataset_confidence.cpu(), phase).tolist()
        return phase, dict(zip(modulator.modalities, mask))
    if not modulator.active(epoch):
        return phase, {m: 1.0 for m in modulator.modalities}
    return phase, {m: train.get(KAPPA_PREFIX + m, 1.0) for m in modulator.modalities}


def epoch_rows(
    history: list[dict], modalities: list[str], teacher_confidence: dict[str, float], modulator: Modulator | None
) -> list[dict]:
    """The tidy rows of ``epochs.csv`` from history records (see the module docstring)."""
    rows = []
    for record in history:
        epoch, train, val = record["epoch"], record["train"], record["val"]
        phase, allowed = smp_choice(modulator, epoch, train)
        terms = {f"train_{name}": value for name, value in train.items() if not name.startswith(KAPPA_PREFIX)}
        multimodal = {f"val_multimodal_{name}": value for name, value in val["multimodal"].items()}
        for modality in modalities:
            row = {"epoch": epoch, "modality": modality, "smp_phase": phase,
                   "smp_allowed": allowed.get(modality, 1.0), "kappa": train.get(KAPPA_PREFIX + modality, ""),
                   "teacher_val_confidence": teacher_confidence.get(modality, "")}
            row.update({f"val_{name}": value for name, value in val["per_modality"][modality].items()})
            row.update(multimodal)
            row.update(terms)
            rows.append(row)
    return rows


def write_epochs_csv(path: Path, rows: list[dict]) -> None:
    """Write rows (union of their keys as columns, first-seen order) atomically."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(buffer.getvalue()))


def record_epochs(
    run_dir: Path,
    history: list[dict],
    data: MultimodalData,
    teachers: dict[str, torch.nn.Module],
    modulator: Modulator | None,
    device: torch.device,
    batch_size: int,
    tensorboard: bool = True,
) -> list[dict]:
    """Write ``run_dir/epochs.csv`` and (``tensorboard``) the per-epoch teacher confidence and SMP choice to TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter

    confidence = split_confidence(teachers, data, "val", device, batch_size) if teachers else {}
    rows = epoch_rows(history, list(data.modalities), confidence, modulator)
    write_epochs_csv(run_dir / "epochs.csv", rows)
    if not tensorboard:
        return rows
    with SummaryWriter(str(run_dir / "tb")) as writer:
        for row in rows:
            if row["teacher_val_confidence"] != "":
                writer.add_scalar(f"analysis/{row['modality']}/teacher_confidence", row["teacher_val_confidence"], row["epoch"])
            if row["smp_phase"] >= 0:
                writer.add_scalar(f"analysis/{row['modality']}/smp_allowed", row["smp_allowed"], row["epoch"])
    return rows
