"""Metrics, per-modality evaluation inside the multimodal model, and model selection."""

from __future__ import annotations

import torch
from torch import nn

from g2d.data.base import Batches, MultimodalData, to_device


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {"accuracy": (logits.argmax(dim=-1) == labels).double().mean().item()}


def regression_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """MSE, MAPE (percent) and R² of the sigmoid prediction against targets on the dataset's scale."""
    prediction = torch.sigmoid(logits.squeeze(-1)).double()
    targets = targets.double()
    error = prediction - targets
    total = ((targets - targets.mean()) ** 2).sum().clamp_min(1e-12)
    return {
        "mse": (error**2).mean().item(),
        "mape": (100.0 * (error.abs() / targets.abs().clamp_min(1e-12)).mean()).item(),
        "r2": (1.0 - (error**2).sum() / total).item(),
    }


def metrics_for(logits: torch.Tensor, labels: torch.Tensor, task: str) -> dict[str, float]:
    if task == "classification":
        return classification_metrics(logits, labels)
    return regression_metrics(logits, labels)


@torch.no_grad()
def predict(model: nn.Module, data: MultimodalData, split: str, device: torch.device, batch_size: int) -> dict:
    """Fused and per-modality logits over a whole split, gathered on the device."""
    model.eval()
    fused, per_modality, labels = [], {m: [] for m in data.modalities}, []
    for batch in Batches(data.splits[split], batch_size, shuffle=False):
        inputs = to_device(batch, data, device)
        output = model(inputs)
        fused.append(output.logits.float())
        for m in per_modality:
            per_modality[m].append(output.modality_logits[m].float())
        labels.append(inputs["label"])
    return {
        "logits": torch.cat(fused),
        "modality_logits": {m: torch.cat(v) for m, v in per_modality.items()},
        "labels": torch.cat(labels),
    }


def evaluate(model: nn.Module, data: MultimodalData, split: str, device: torch.device, batch_size: int) -> dict:
    """``{"multimodal": {...}, "per_modality": {m: {...}}}`` for one split."""
    outputs = predict(model, data, split, device, batch_size)
    return {
        "multimodal": metrics_for(outputs["logits"], outputs["labels"], data.task),
        "per_modality": {
            m: metrics_for(logits, outputs["labels"], data.task) for m, logits in outputs["modality_logits"].items()
        },
    }


def selection_score(metrics: dict, task: str) -> float:
    """Higher is better: multimodal validation accuracy, or minus MSE for regression."""
    if task == "classification":
        return metrics["multimodal"]["accuracy"]
    return -metrics["multimodal"]["mse"]
