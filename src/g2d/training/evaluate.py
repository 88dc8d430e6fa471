"""Metrics, per-modality evaluation inside the multimodal model, and model selection."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from g2d.data.base import Batches, MultimodalData, to_device
from g2d.training import distributed


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, mean cross-entropy (``loss``, which MSES watches) and confidence (Eq. 5: the mean
    probability given to the true class, what the paper's confidence ratio compares)."""
    return {
        "accuracy": (logits.argmax(dim=-1) == labels).double().mean().item(),
        "loss": F.cross_entropy(logits.double(), labels).item(),
        "confidence": logits.double().softmax(dim=-1).gather(1, labels.view(-1, 1)).mean().item(),
    }


def regression_metrics(
    logits: torch.Tensor, targets: torch.Tensor, offset: float = 0.0, span: float = 1.0
) -> dict[str, float]:
    """Eq. 1's loss (``mse`` on the [0, 1] scale, also ``loss``), confidence (``1 - mean |error|`` on
    that scale, as Eq. 5 is read for regression), and MAPE (percent) and R² on the dataset's own
    scale ``offset + span * y``, where a percentage error means something."""
    prediction = torch.sigmoid(logits.squeeze(-1)).double()
    scaled_targets = targets.double()
    mse = ((prediction - scaled_targets) ** 2).mean().item()
    confidence = 1.0 - (prediction - scaled_targets).abs().mean().item()
    prediction = offset + span * prediction
    targets = offset + span * scaled_targets
    error = prediction - targets
    total = ((targets - targets.mean()) ** 2).sum().clamp_min(1e-12)
    return {
        "mse": mse,
        "loss": mse,
        "confidence": confidence,
        "mape": (100.0 * (error.abs() / targets.abs().clamp_min(1e-12)).mean()).item(),
        "r2": (1.0 - (error**2).sum() / total).item(),
    }


def metrics_for(logits: torch.Tensor, labels: torch.Tensor, data: MultimodalData) -> dict[str, float]:
    if data.task == "classification":
        return classification_metrics(logits, labels)
    return regression_metrics(logits, labels, data.target_offset, data.target_span)


@torch.no_grad()
def predict(
    model: nn.Module, data: MultimodalData, split: str, device: torch.device, batch_size: int, method: Any = None
) -> dict:
    """Fused and per-modality logits over a whole split, gathered on the device.

    ``method.predict`` maps the model's output to the logits scored (a method such as MLA
    or UME combines modalities its own way at test time); without a method, the model's own.
    Under DDP each process predicts its shard of the split and the shards are gathered.
    """
    model.eval()
    distributed.broadcast_module(model, buffers_only=True)  # every rank scores with rank 0's BatchNorm statistics
    fused, per_modality, labels = [], {m: [] for m in data.modalities}, []
    for batch in Batches(distributed.shard_rows(data.splits[split]), batch_size, shuffle=False):
        inputs = to_device(batch, data, device)
        output = model(inputs)
        logits, modality_logits = method.predict(output) if method is not None else (output.logits, output.modality_logits)
        fused.append(logits.float())
        for m in per_modality:
            per_modality[m].append(modality_logits[m].float())
        labels.append(inputs["label"])
    rows = data.size(split)
    return {
        "logits": distributed.gather_rows(torch.cat(fused), rows),
        "modality_logits": {m: distributed.gather_rows(torch.cat(v), rows) for m, v in per_modality.items()},
        "labels": distributed.gather_rows(torch.cat(labels), rows),
    }


def evaluate(
    model: nn.Module, data: MultimodalData, split: str, device: torch.device, batch_size: int, method: Any = None
) -> dict:
    """``{"multimodal": {...}, "per_modality": {m: {...}}}`` for one split."""
    outputs = predict(model, data, split, device, batch_size, method)
    return {
        "multimodal": metrics_for(outputs["logits"], outputs["labels"], data),
        "per_modality": {
            m: metrics_for(logits, outputs["labels"], data) for m, logits in outputs["modality_logits"].items()
        },
    }


def selection_score(metrics: dict, task: str) -> float:
    """Higher is better: multimodal validation accuracy, or minus MSE for regression."""
    if task == "classification":
        return metrics["multimodal"]["accuracy"]
    return -metrics["multimodal"]["mse"]
